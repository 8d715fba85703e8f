//! The queue on its own: transitions, recovery, cancellation, concurrent claims.

// In tests an unwrap that fails is the test failing, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use nrvna_queue::{
    CancelOutcome, Claim, JobId, JobOutcome, JobStatus, Mode, Outcome, State, Submission, Workspace,
};

fn ws() -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("ws")).unwrap();
    (dir, ws)
}

fn text(prompt: &str) -> Submission {
    Submission {
        prompt: prompt.into(),
        ..Submission::default()
    }
}

fn claim(ws: &Workspace, id: &JobId) -> nrvna_queue::ClaimedJob {
    match ws.claim(id).unwrap() {
        Claim::Claimed(job) => *job,
        other => panic!("claim {id}: {other:?}"),
    }
}

#[test]
fn a_job_walks_through_every_state() {
    let (_d, ws) = ws();
    let id = ws.submit(text("hello")).unwrap();
    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Queued));
    assert!(ws.list(State::Writing).unwrap().is_empty());
    let job = claim(&ws, &id);
    assert_eq!(job.prompt, "hello");
    assert_eq!(job.meta.attempts, 1);
    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Running));
    // A second claim loses.
    assert!(matches!(ws.claim(&id).unwrap(), Claim::Gone));
    ws.complete(
        &job,
        Outcome {
            artifacts: vec![("result.txt".into(), b"hi there".to_vec())],
            prompt_tokens: Some(3),
            cached_tokens: Some(1),
            generated_tokens: Some(2),
            model: Some("m".into()),
            ..Outcome::default()
        },
    )
    .unwrap();
    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Done));
    let meta = ws.read_meta(State::Done, &id).unwrap();
    assert_eq!(meta.status.map(JobStatus::as_str), Some("done"));
    assert_eq!(meta.artifacts, vec!["result.txt"]);
    assert_eq!(meta.generated_tokens, Some(2));
    assert_eq!(meta.cached_tokens, Some(1));
    assert_eq!(meta.model.as_deref(), Some("m"));
    assert!(meta.completed_at.is_some() && meta.duration_s.is_some());
    assert_eq!(
        ws.read_file(State::Done, &id, "result.txt").unwrap(),
        b"hi there"
    );
    match ws.outcome(State::Done, &id).unwrap() {
        Some(JobOutcome::Done(artifact)) => {
            assert_eq!(artifact.bytes, b"hi there");
            assert_eq!(artifact.kind, nrvna_queue::ArtifactKind::Text);
            assert!(artifact.path.ends_with("result.txt"));
        }
        other => panic!("{other:?}"),
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(ws.job_dir(State::Done, &id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn failures_keep_the_reason_and_the_partial_output() {
    let (_d, ws) = ws();
    let id = ws.submit(text("x")).unwrap();
    let job = claim(&ws, &id);
    ws.fail(
        &job,
        "boom",
        Outcome {
            artifacts: vec![("response.txt".into(), b"half".to_vec())],
            ..Outcome::default()
        },
    )
    .unwrap();
    assert_eq!(
        ws.read_file(State::Failed, &id, "error.txt").unwrap(),
        b"boom"
    );
    assert_eq!(
        ws.read_file(State::Failed, &id, "response.txt").unwrap(),
        b"half"
    );
    let meta = ws.read_meta(State::Failed, &id).unwrap();
    assert_eq!(meta.status.map(JobStatus::as_str), Some("failed"));
    assert_eq!(meta.artifacts, vec!["response.txt", "error.txt"]);
    assert_eq!(
        ws.outcome(State::Failed, &id).unwrap(),
        Some(JobOutcome::Failed {
            reason: "boom".into(),
            partial: Some("half".into())
        })
    );
    assert_eq!(ws.outcome(State::Running, &id).unwrap(), None);
}

#[test]
fn recovery_requeues_then_fails_at_the_ceiling() {
    let (_d, ws) = ws();
    let id = ws.submit(text("crashy")).unwrap();
    for round in 1..=3u32 {
        let job = claim(&ws, &id);
        assert_eq!(job.meta.attempts, round);
        // The daemon "crashes": the job stays in processing/.
        let report = ws.recover(3).unwrap();
        if round < 3 {
            assert_eq!(report.requeued, vec![id.clone()]);
        } else {
            assert_eq!(report.failed, vec![id.clone()]);
        }
    }
    let error = ws.read_file(State::Failed, &id, "error.txt").unwrap();
    assert!(
        String::from_utf8(error)
            .unwrap()
            .contains("started 3 times")
    );
}

#[test]
fn graceful_requeue_does_not_count_the_attempt() {
    let (_d, ws) = ws();
    let id = ws.submit(text("x")).unwrap();
    let _job = claim(&ws, &id);
    ws.requeue(&id, true).unwrap();
    assert_eq!(ws.read_meta(State::Queued, &id).unwrap().attempts, 0);
}

#[test]
fn cancel_queued_running_and_finished_jobs() {
    let (_d, ws) = ws();
    let queued = ws.submit(text("a")).unwrap();
    assert_eq!(ws.cancel(&queued).unwrap(), CancelOutcome::Cancelled);
    let meta = ws.read_meta(State::Failed, &queued).unwrap();
    assert_eq!(meta.status.map(JobStatus::as_str), Some("cancelled"));
    assert_eq!(
        ws.outcome(State::Failed, &queued).unwrap(),
        Some(JobOutcome::Cancelled)
    );
    assert_eq!(
        ws.cancel(&queued).unwrap(),
        CancelOutcome::AlreadyEnded(State::Failed)
    );
    let running = ws.submit(text("b")).unwrap();
    let _job = claim(&ws, &running);
    assert_eq!(ws.cancel(&running).unwrap(), CancelOutcome::Requested);
    assert_eq!(ws.cancel_requests(), vec![running.clone()]);
    ws.clear_cancel_request(&running);
    assert!(ws.cancel_requests().is_empty());
    let unknown = JobId::parse("1_2_3").unwrap();
    assert_eq!(ws.cancel(&unknown).unwrap(), CancelOutcome::NotFound);
}

#[test]
fn concurrent_claimers_run_each_job_exactly_once() {
    let (_d, ws) = ws();
    let ids: Vec<JobId> = (0..200)
        .map(|i| ws.submit(text(&format!("{i}"))).unwrap())
        .collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let ws = ws.clone();
            let ids = ids.clone();
            let seen = seen.clone();
            s.spawn(move || {
                for id in &ids {
                    if let Claim::Claimed(job) = ws.claim(id).unwrap() {
                        seen.lock().unwrap().push(id.clone());
                        ws.complete(&job, Outcome::default()).unwrap();
                    }
                }
            });
        }
    });
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), ids.len());
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), ids.len());
    assert_eq!(ws.counts().unwrap().done, 200);
}

#[test]
fn a_running_job_shows_its_start_from_the_moment_it_is_visible() {
    let (_d, ws) = ws();
    let ids: Vec<JobId> = (0..300)
        .map(|i| ws.submit(text(&format!("{i}"))).unwrap())
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (checked, incomplete) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let (mut checked, mut incomplete) = (0, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for id in ws.list(State::Running).unwrap_or_default() {
                    // The job may move on while it is read: only a meta read from
                    // processing/ counts.
                    if let Ok(meta) = ws.read_meta(State::Running, &id) {
                        checked += 1;
                        if (meta.started_at.is_none() || meta.attempts == 0)
                            && !incomplete.contains(&id)
                        {
                            incomplete.push(id);
                        }
                    }
                }
            }
            (checked, incomplete)
        });
        for id in &ids {
            let job = claim(&ws, id);
            // Stay running a moment so the watcher sees most jobs.
            std::thread::sleep(std::time::Duration::from_micros(200));
            ws.complete(&job, Outcome::default()).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert!(checked > 0, "the watcher never saw a running job");
    assert!(
        incomplete.is_empty(),
        "{} job(s) seen running without a start, first {:?}",
        incomplete.len(),
        incomplete.first()
    );
}

#[test]
fn submissions_are_validated_and_leave_nothing_behind() {
    let (_d, ws) = ws();
    let bad = [
        text(""),
        Submission {
            tags: vec!["no spaces".into()],
            ..text("x")
        },
        Submission {
            images: vec!["/nonexistent.png".into()],
            ..text("x")
        },
        Submission {
            prompt: "a".repeat((4 << 20) + 1),
            ..Submission::default()
        },
        Submission {
            files: vec![("../escape".into(), vec![])],
            ..text("x")
        },
    ];
    for sub in bad {
        assert!(ws.submit(sub).is_err());
    }
    assert_eq!(ws.counts().unwrap(), nrvna_queue::Counts::default());
    // An embed job may have an empty prompt only with images; mode is recorded.
    let id = ws
        .submit(Submission {
            mode: Mode::Embed,
            ..text("embed me")
        })
        .unwrap();
    assert_eq!(ws.read_meta(State::Queued, &id).unwrap().mode, Mode::Embed);
}

#[test]
fn an_image_must_be_what_its_extension_says() {
    let (dir, ws) = ws();
    let image = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        Submission {
            images: vec![path],
            ..text("describe")
        }
    };
    let webp = b"RIFF\0\0\0\0WEBPVP8 ";
    for (name, bytes, reason) in [
        ("text.png", b"hello".as_slice(), "content is not a"),
        ("short.gif", b"GIF".as_slice(), "content is not a"),
        (
            "jpeg.png",
            b"\xff\xd8\xff\xe0".as_slice(),
            "content is a jpeg",
        ),
        ("webp.jpg", webp.as_slice(), "content is a webp"),
    ] {
        let err = image(name, bytes).validate(&ws.limits()).unwrap_err();
        assert!(err.to_string().contains(reason), "{name}: {err}");
    }
    for (name, bytes) in [
        ("a.png", b"\x89PNG\r\n\x1a\n".as_slice()),
        ("a.JPG", b"\xff\xd8\xff\xdb".as_slice()),
        ("a.jpeg", b"\xff\xd8\xff\xe1".as_slice()),
        ("a.gif", b"GIF89a".as_slice()),
        ("a.webp", webp.as_slice()),
    ] {
        image(name, bytes).validate(&ws.limits()).unwrap();
    }
}

#[test]
fn hostile_ids_never_reach_the_file_system() {
    for bad in ["../x", "/etc/passwd", "a\0b", "1/2", ""] {
        assert!(JobId::parse(bad).is_err(), "{bad:?}");
    }
}

fn alice() -> nrvna_queue::Actor {
    nrvna_queue::Actor {
        name: "alice".into(),
        uid: 1000,
    }
}

#[test]
fn a_held_job_waits_for_its_decision() {
    use nrvna_queue::{DecideOutcome, Verdict};
    let (_d, ws) = ws();
    let held = ws.submit_held_with(text("refund"), |_| Ok(())).unwrap();
    assert_eq!(ws.state_of(&held).unwrap(), Some(State::Held));
    assert_eq!(ws.counts().unwrap().held, 1);
    assert!(
        ws.sweep_ready().unwrap().is_empty(),
        "a daemon must not see it"
    );
    let meta = ws.read_meta(State::Held, &held).unwrap();
    assert_eq!(meta.spec_sha256.as_ref().map(String::len), Some(64));
    assert!(meta.spec_parts.contains_key("prompt.txt"));

    let DecideOutcome::Decided(decision) = ws.approve(&held, &alice(), Some("ok")).unwrap() else {
        panic!("not approved");
    };
    assert_eq!(decision.verdict, Verdict::Approved);
    assert_eq!(decision.spec_sha256, meta.spec_sha256);
    assert_eq!(ws.state_of(&held).unwrap(), Some(State::Queued));
    assert_eq!(
        ws.approve(&held, &alice(), None).unwrap(),
        DecideOutcome::NotHeld(State::Queued)
    );
    assert!(ws.audited(&held, &decision).unwrap());
    assert!(ws.verify(&held).unwrap().ok());
    // An approved job still runs through the claim's spec check.
    let job = claim(&ws, &held);
    assert_eq!(
        job.meta.decision.as_ref().map(|d| d.by.as_str()),
        Some("alice")
    );

    let denied = ws.submit_held_with(text("delete"), |_| Ok(())).unwrap();
    ws.deny(&denied, &alice(), "no").unwrap();
    assert_eq!(
        ws.outcome(State::Failed, &denied).unwrap(),
        Some(JobOutcome::Denied {
            reason: "denied by alice: no".into()
        })
    );
    let missing = JobId::parse("1_2").unwrap();
    assert_eq!(
        ws.deny(&missing, &alice(), "x").unwrap(),
        DecideOutcome::NotFound
    );
    // Cancelling a held job ends it as cancelled.
    let cancelled = ws.submit_held_with(text("c"), |_| Ok(())).unwrap();
    assert_eq!(ws.cancel(&cancelled).unwrap(), CancelOutcome::Cancelled);
    assert_eq!(
        ws.outcome(State::Failed, &cancelled).unwrap(),
        Some(JobOutcome::Cancelled)
    );
}

#[test]
fn a_decision_interrupted_by_a_crash_is_finished_or_undone() {
    let (_d, ws) = ws();
    let deciding = ws.root().join(nrvna_queue::DECIDING_DIR);
    std::fs::create_dir_all(&deciding).unwrap();
    // Taken but not recorded: held again.
    let taken = ws.submit_held_with(text("a"), |_| Ok(())).unwrap();
    std::fs::rename(ws.job_dir(State::Held, &taken), deciding.join(&taken)).unwrap();
    assert_eq!(ws.state_of(&taken).unwrap(), Some(State::Held));
    // Recorded in meta.json but not in the audit trail: finished, audited once.
    let recorded = ws.submit_held_with(text("b"), |_| Ok(())).unwrap();
    let mut meta = ws.read_meta(State::Held, &recorded).unwrap();
    meta.decision = Some(nrvna_queue::Decision {
        verdict: nrvna_queue::Verdict::Approved,
        by: "alice".into(),
        uid: 1000,
        at: "2026-01-01T00:00:00.000000Z".into(),
        note: None,
        reason: None,
        spec_sha256: meta.spec_sha256.clone(),
    });
    let dir = ws.job_dir(State::Held, &recorded);
    std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    std::fs::rename(&dir, deciding.join(&recorded)).unwrap();

    let (finished, restored) = ws.recover_decisions().unwrap();
    assert_eq!(
        (finished, restored),
        (vec![recorded.clone()], vec![taken.clone()])
    );
    assert_eq!(ws.state_of(&taken).unwrap(), Some(State::Held));
    assert_eq!(ws.state_of(&recorded).unwrap(), Some(State::Queued));
    assert_eq!(ws.audit_records().unwrap().len(), 1);
    assert!(ws.verify(&recorded).unwrap().ok());
    assert_eq!(ws.recover_decisions().unwrap(), (vec![], vec![]));
}

#[test]
fn a_workspace_made_before_held_jobs_still_opens() {
    let (_d, ws) = ws();
    std::fs::remove_dir(ws.state_dir(State::Held)).unwrap();
    let again = Workspace::open(ws.root()).unwrap();
    assert_eq!(again.counts().unwrap().held, 0);
}
