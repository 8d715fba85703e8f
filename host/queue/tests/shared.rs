//! A workspace shared by several daemons (crate::nodes): claims recorded after the
//! claiming rename, leases judged on the observer's own clock, takeovers and their fence.

// In tests an unwrap that fails is the test failing, with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nrvna_queue::nodes::{Claimer, LeaseWatch, Node, NodeId};
use nrvna_queue::{Claim, ClaimedJob, JobId, Outcome, QueueError, State, Submission, Workspace};

const LEASE: Duration = Duration::from_millis(300);

fn ws() -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("ws")).unwrap();
    (dir, ws)
}

fn submit(ws: &Workspace) -> JobId {
    ws.submit(Submission {
        prompt: "hello".into(),
        ..Submission::default()
    })
    .unwrap()
}

fn claimer(name: &str) -> Claimer {
    Claimer::new(NodeId::parse(name).unwrap())
}

fn claimed(ws: &Workspace, id: &JobId) -> ClaimedJob {
    match ws.claim(id).unwrap() {
        Claim::Claimed(job) => *job,
        other => panic!("claim {id}: {other:?}"),
    }
}

/// Runs `b`'s recovery duty for `leases` leases, looking five times per lease.
fn observe(ws: &Workspace, b: &Claimer, watch: &mut LeaseWatch, leases: u32) -> Vec<JobId> {
    let mut requeued = Vec::new();
    for _ in 0..leases * 5 {
        requeued.extend(ws.recover_lapsed(b, watch, 5).unwrap().requeued);
        std::thread::sleep(LEASE / 5);
    }
    requeued
}

#[test]
fn a_claim_records_its_owner_in_claim_json_and_meta() {
    let (_d, ws) = ws();
    let a = claimer("a");
    let ws_a = ws.clone().with_claimer(a.clone());
    let id = submit(&ws);
    let job = claimed(&ws_a, &id);
    assert_eq!(job.meta.attempts, 1);
    assert_eq!(job.meta.node.as_deref(), Some("a"));
    let claim: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.dir.join("claim.json")).unwrap()).unwrap();
    assert_eq!(claim["node"], "a");
    assert_eq!(claim["incarnation"], a.incarnation.as_str());
    assert_eq!(job.meta.claim.as_deref(), claim["claim"].as_str());
    // A second claimer finds nothing to claim.
    let ws_b = ws.clone().with_claimer(claimer("b"));
    assert!(matches!(ws_b.claim(&id).unwrap(), Claim::Gone));
    ws_a.complete(&job, Outcome::default()).unwrap();
    let meta = ws.read_meta(State::Done, &id).unwrap();
    assert_eq!((meta.node.as_deref(), meta.claim), (Some("a"), None));
}

#[test]
fn a_live_nodes_job_is_never_taken_and_a_dead_nodes_is_after_its_lease() {
    let (_d, ws) = ws();
    let node = Node::join(ws.root(), NodeId::parse("a").unwrap(), LEASE).unwrap();
    let ws_a = ws.clone().with_claimer(node.claimer().clone());
    let id = submit(&ws);
    let _job = claimed(&ws_a, &id);
    let b = claimer("b");
    let mut watch = LeaseWatch::new(LEASE);
    // Four leases while a's heartbeat runs: nothing taken.
    assert!(observe(&ws, &b, &mut watch, 4).is_empty());
    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Running));
    // a dies (its heartbeat stops; here it also leaves): after a lease, b requeues.
    drop(node);
    let requeued = observe(&ws, &b, &mut watch, 3);
    assert_eq!(requeued, vec![id.clone()]);
    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Queued));
    let meta = ws.read_meta(State::Queued, &id).unwrap();
    // a counted its start; b does not count it again.
    assert_eq!(meta.attempts, 1);
    assert!(meta.claim.is_none() && meta.started_at.is_none());
    assert!(
        !ws.root()
            .join("input/ready")
            .join(&id)
            .join("claim.json")
            .exists()
    );
}

#[test]
fn a_job_renamed_but_never_claimed_is_requeued_with_its_attempt_counted() {
    let (_d, ws) = ws();
    let id = submit(&ws);
    // A claimer that died between its rename and its claim file.
    std::fs::rename(
        ws.root().join("input/ready").join(&id),
        ws.root().join("processing").join(&id),
    )
    .unwrap();
    let b = claimer("b");
    let mut watch = LeaseWatch::new(LEASE);
    assert_eq!(observe(&ws, &b, &mut watch, 2), vec![id.clone()]);
    assert_eq!(ws.read_meta(State::Queued, &id).unwrap().attempts, 1);
    let job = claimed(&ws.clone().with_claimer(b), &id);
    assert_eq!(job.meta.attempts, 2);
}

#[test]
fn a_rename_that_reported_enoent_after_it_succeeded_is_settled_by_the_claim_file() {
    let (_d, ws) = ws();
    let id = submit(&ws);
    // What a retried NFS rename leaves: the job moved, the claimer told ENOENT.
    std::fs::rename(
        ws.root().join("input/ready").join(&id),
        ws.root().join("processing").join(&id),
    )
    .unwrap();
    let ws_a = ws.clone().with_claimer(claimer("a"));
    let job = claimed(&ws_a, &id);
    assert_eq!(job.meta.attempts, 1);
    // Anyone else arriving at the same directory loses.
    let ws_c = ws.clone().with_claimer(claimer("c"));
    assert!(matches!(ws_c.claim(&id).unwrap(), Claim::Gone));
}

#[test]
fn a_daemon_whose_lease_lapsed_cannot_settle_or_requeue_the_job_taken_from_it() {
    let (_d, ws) = ws();
    // a claims without a heartbeat: to the others it is dead from the start.
    let ws_a = ws.clone().with_claimer(claimer("a"));
    let id = submit(&ws);
    let job = claimed(&ws_a, &id);
    let b = claimer("b");
    let mut watch = LeaseWatch::new(LEASE);
    assert_eq!(observe(&ws, &b, &mut watch, 2), vec![id.clone()]);
    // b claims it again; a wakes up and tries to finish or requeue its run.
    let ws_b = ws.clone().with_claimer(b);
    let again = claimed(&ws_b, &id);
    assert!(matches!(
        ws_a.complete(&job, Outcome::default()),
        Err(QueueError::ClaimLost { .. })
    ));
    assert!(matches!(
        ws_a.requeue_claimed(&job, true),
        Err(QueueError::ClaimLost { .. })
    ));
    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Running));
    ws_b.complete(&again, Outcome::default()).unwrap();
    let meta = ws.read_meta(State::Done, &id).unwrap();
    assert_eq!((meta.attempts, meta.node.as_deref()), (2, Some("b")));
}

#[test]
fn several_shared_claimers_racing_run_each_job_once() {
    let (_d, ws) = ws();
    let ids: Vec<JobId> = (0..40).map(|_| submit(&ws)).collect();
    let won = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for n in 0..4 {
            let ws = ws.clone().with_claimer(claimer(&format!("n{n}")));
            let (ids, won) = (&ids, &won);
            s.spawn(move || {
                for id in ids {
                    if let Claim::Claimed(job) = ws.claim(id).unwrap() {
                        ws.complete(&job, Outcome::default()).unwrap();
                        won.lock().unwrap().push(id.clone());
                    }
                }
            });
        }
    });
    let mut won = won.into_inner().unwrap();
    won.sort();
    assert_eq!(won, ids);
    for id in &ids {
        assert_eq!(ws.read_meta(State::Done, id).unwrap().attempts, 1);
    }
}

#[test]
fn daemons_sweeping_and_cleaning_at_once_move_each_bad_entry_once_and_lose_no_job() {
    let (_d, ws) = ws();
    let ids: Vec<JobId> = (0..10).map(|_| submit(&ws)).collect();
    let ready = ws.state_dir(State::Queued);
    for i in 0..20 {
        std::fs::write(ready.join(format!("not-a-job-{i}")), b"x").unwrap();
    }
    let staging = ws.state_dir(State::Writing);
    for i in 0..20 {
        std::fs::create_dir(staging.join(format!("stale-{i}"))).unwrap();
    }
    std::thread::scope(|s| {
        for n in 0..4 {
            let ws = ws.clone().with_claimer(claimer(&format!("n{n}")));
            let ids = &ids;
            s.spawn(move || {
                let mut seen = std::collections::HashMap::new();
                for _ in 0..3 {
                    let mut listed = ws.sweep_ready().unwrap();
                    listed.sort();
                    assert_eq!(&listed, ids, "node n{n} lost sight of a queued job");
                    ws.clean_stale_staging_seen(&mut seen, Duration::ZERO)
                        .unwrap();
                }
            });
        }
    });
    // Every bad entry is in exactly one failed job, and nothing is left half-moved.
    let mut rejected = Vec::new();
    for id in ws.list(State::Failed).unwrap() {
        let moved = ws.job_dir(State::Failed, &id).join("rejected");
        assert!(moved.exists(), "failed job {id} holds no rejected entry");
        rejected.push(std::fs::read(&moved).unwrap());
    }
    assert_eq!(rejected.len(), 20);
    assert!(ws.list(State::Running).unwrap().is_empty());
    assert_eq!(std::fs::read_dir(&ready).unwrap().count(), ids.len());
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}
