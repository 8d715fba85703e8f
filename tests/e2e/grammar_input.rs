//! Grammars and JSON Schemas are checked at submit: what llama.cpp would refuse when the
//! job runs is refused by `wrk`, naming the file and where the problem is, and nothing is
//! queued. A grammar that gets past submit (a hand-staged job) still fails with the
//! checker's message in error.txt, not only "Grammar call returned null".

use std::fs;

use nrvna_tests::{TestWs, code, stderr};

#[test]
fn a_bad_grammar_is_refused_at_submit_with_line_and_column() {
    let ws = TestWs::new();
    let bad = ws.scratch().join("bad.gbnf");
    // Mentions `root`, so the old "contains root" check let it through.
    fs::write(&bad, "root ::= answer\nanswer ::= \"yes\" | \"no\n").unwrap();
    let out = ws.wrk(&["Is water wet?", "--grammar", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("bad.gbnf"), "{err}");
    assert!(err.contains("line 2, column 20"), "{err}");
    assert!(err.contains("never closed"), "{err}");
    assert!(!ws.path.exists(), "a refused submit created the workspace");

    // An undefined rule is named, where it is used.
    fs::write(&bad, "root ::= greeting \" world\"\n").unwrap();
    let out = ws.wrk(&["hi", "--grammar", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("line 1, column 10") && err.contains("undefined rule identifier 'greeting'"),
        "{err}"
    );
    assert!(!ws.path.exists(), "a refused submit created the workspace");
}

#[test]
fn a_good_grammar_is_accepted_and_stored() {
    let ws = TestWs::new();
    let good = ws.scratch().join("list.gbnf");
    let grammar = "# a short list\nroot ::= item (\",\" ws item){0,4}\n\
                   item ::= [a-z]+\nws ::= [ \\t]*\n";
    fs::write(&good, grammar).unwrap();
    let id = ws.submit(&["Name fruits", "--grammar", good.to_str().unwrap()]);
    assert_eq!(ws.job_file("input/ready", &id, "grammar.gbnf"), grammar);
}

#[test]
fn a_schema_type_llama_cpp_cannot_convert_is_refused_naming_it_and_where() {
    let ws = TestWs::new();
    let schema = ws.scratch().join("person.json");
    fs::write(
        &schema,
        r#"{"type":"object","properties":{"age":{"type":"nosuchtype"}}}"#,
    )
    .unwrap();
    let out = ws.wrk(&[
        "Describe a person",
        "--json-schema",
        schema.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("person.json"), "{err}");
    assert!(
        err.contains(r#"unsupported JSON Schema type "nosuchtype" at /properties/age"#),
        "{err}"
    );
    assert!(!err.contains("ffi error"), "{err}");
    assert!(!ws.path.exists(), "a refused submit created the workspace");
}

#[test]
fn a_hand_staged_bad_grammar_fails_the_job_with_the_checkers_message() {
    let ws = TestWs::new();
    let good = ws.scratch().join("yesno.gbnf");
    fs::write(&good, "root ::= \"yes\" | \"no\"\n").unwrap();
    // Queued with no daemon running, then the staged grammar is broken by hand.
    let id = ws.submit(&["Is water wet?", "--grammar", good.to_str().unwrap()]);
    fs::write(
        ws.path.join("input/ready").join(&id).join("grammar.gbnf"),
        "root ::= yes\n",
    )
    .unwrap();
    // Staged by hand means no spec hash either: with one, the claim would refuse the
    // edited job before its grammar is looked at (tests/e2e/approval.rs).
    let mut meta = ws.meta("input/ready", &id);
    let obj = meta.as_object_mut().unwrap();
    obj.remove("spec_sha256");
    obj.remove("spec_parts");
    fs::write(
        ws.path.join("input/ready").join(&id).join("meta.json"),
        meta.to_string(),
    )
    .unwrap();
    let _d = ws.daemon(1);
    let (rc, _, err) = ws.follow(&id);
    assert_eq!(rc, 1, "{err}");
    let error = ws.job_file("failed", &id, "error.txt");
    assert!(
        error.contains("line 1, column 10") && error.contains("undefined rule identifier 'yes'"),
        "{error}"
    );
}
