//! The workspace command's exit code is its one result: it is recorded even when the
//! workspace is frozen to disk around the moment the command ends (the agent repeats
//! `CmdExited` until the host says it has it), over repeated stop, start, freeze and
//! thaw cycles with the freeze at different moments, and recorded once.

mod common;
#[path = "support/server.rs"]
mod server;

use serde_json::{json, Value};
use server::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_exit_code_is_recorded_across_a_freeze_at_any_moment() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let r = s
        .sdk()
        .create(&small(
            json!({"wait_ready": true, "config": {"cmd": "echo started-by-cmd; exit 3"}}),
        ))
        .await
        .unwrap();
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    for round in 0..8u64 {
        for op in ["stop", "start"] {
            let (st, b) = s.call("POST", &format!("/workspace/{id}/{op}"), None).await;
            assert!(st < 300, "{op}: {b}");
        }
        // The freeze lands before, during or after the command's end.
        tokio::time::sleep(Duration::from_millis(50 * round)).await;
        for op in ["pause", "resume"] {
            let (st, b) = s.call("POST", &format!("/workspace/{id}/{op}"), None).await;
            assert!(st < 300, "{op}: {b}");
        }
        let t0 = Instant::now();
        let code = loop {
            let (_, w) = s.call("GET", &format!("/workspace/{id}"), None).await;
            let code = w["workspace"]["last_exit_code"].clone();
            if code != Value::Null || t0.elapsed() > Duration::from_secs(20) {
                break code;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            code,
            3,
            "round {round}: exit code not recorded\n{}",
            s.log()
        );
        // Recorded once: the agent repeats its report every 2 s until the host
        // acknowledges it, and a freeze can make one report arrive twice.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (_, d) = s
            .call("GET", &format!("/workspace/{id}/details"), None)
            .await;
        let ops: Vec<&str> = d["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["op"].as_str().unwrap_or(""))
            .collect();
        // Oldest first: count back to this round's start.
        let exits = ops
            .iter()
            .rev()
            .take_while(|o| **o != "start")
            .filter(|o| **o == "exit")
            .count();
        assert_eq!(exits, 1, "round {round}: {ops:?}");
    }
    s.delete_and_wait(&id, 60).await;
}
