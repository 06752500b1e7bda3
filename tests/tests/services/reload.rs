//! Hot swap on a running service: versions replaced under load lose and
//! duplicate nothing; broken versions are refused while the live one serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_tests::artifacts::{
    HOSTILE, STORY_TRANSITIONS, WRONG_WORLD, story_transitions_variant,
};
use switchyard_tests::services;

use crate::support::{HANDLER, Options, TestService, existing, transition, transitions_at};

/// A copy of `source` in a fresh directory, the file the service watches.
fn plugin_copy(source: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(services::unique("switchyard-reload-"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plugin.wasm");
    std::fs::copy(source, &path).unwrap();
    (dir, path)
}

/// Writes `bytes` to `path` as a build tool would: a temp file, renamed.
fn replace(path: &Path, bytes: &[u8]) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// The cumulative buckets of the handling-latency histogram: (le, count).
async fn histogram(service: &TestService) -> Vec<(f64, f64)> {
    let listen = service.listen.clone().unwrap();
    let text = crate::support::http_get(&listen, "/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("switchyard_event_duration_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding the 99th percentile.
fn p99(buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().map(|(_, c)| *c).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, count)| *count >= total * 0.99)
        .map(|(le, _)| *le)
        .unwrap_or(f64::NAN)
}

/// The buckets of `later` minus those of `earlier`: what happened between.
fn difference(later: &[(f64, f64)], earlier: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if earlier.is_empty() {
        return later.to_vec(); // no series exposed yet: nothing counted
    }
    later
        .iter()
        .zip(earlier)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect()
}

/// Publishes `count` transitions of stories `<prefix>-<i>` under a timestamp
/// of their own and waits until each one's node is written.
async fn publish_and_wait(service: &TestService, graph: &neo4rs::Graph, prefix: &str, count: i64) {
    let timestamp = services::unique(&format!("{prefix}#"));
    for i in 0..count {
        service
            .publish(transition(&format!("{prefix}-{i}"), &timestamp))
            .await;
    }
    services::eventually(
        Duration::from_secs(240),
        &format!("{count} {prefix} events handled"),
        || async {
            match transitions_at(graph, &timestamp).await? {
                n if n == count => Ok(()),
                n => Err(format!("{n} of {count} nodes")),
            }
        },
    )
    .await;
}

fn series(name: &str, result: &str) -> String {
    format!("switchyard_{name}_total{{handler=\"{HANDLER}\",result=\"{result}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_every_200ms_under_load_loses_and_duplicates_no_event() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let (_dir, path) = plugin_copy(STORY_TRANSITIONS);
    let service = TestService::start(Options {
        plugin: path.display().to_string(),
        http: true,
        ..Options::default()
    })
    .await;
    let versions = [story_transitions_variant(1), story_transitions_variant(2)];

    // Without swaps first, to compare latency side by side; and once more
    // after the swapping phase, so a warm-up shows as a difference between
    // the two quiet phases rather than as the cost of swapping.
    let baseline_events = 5_000;
    let empty = histogram(&service).await;
    publish_and_wait(&service, &graph, "QUIET-A", baseline_events).await;
    let before = histogram(&service).await;

    let swapping = tokio_util::sync::CancellationToken::new();
    let swapper = {
        let (path, stop) = (path.clone(), swapping.clone());
        tokio::spawn(async move {
            let mut swaps = 0u32;
            while !stop.is_cancelled() {
                replace(&path, &versions[(swaps % 2) as usize]);
                swaps += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            swaps
        })
    };

    let total = 20_000;
    publish_and_wait(&service, &graph, "SWAP", total).await;
    swapping.cancel();
    let swaps = swapper.await.unwrap();
    service.settled(Duration::from_secs(60)).await;
    let after = histogram(&service).await;
    publish_and_wait(&service, &graph, "QUIET-B", baseline_events).await;
    service.settled(Duration::from_secs(60)).await;
    let end = histogram(&service).await;
    let hosts = services::fleet_status(&service.names.control_subject).await;
    eprintln!(
        "p99 handling latency: {:.2} ms without swaps ({baseline_events} events), {:.2} ms with a swap every 200 ms ({total} events), {:.2} ms without swaps again ({baseline_events} events); longest swap {:.0} ns",
        p99(&difference(&before, &empty)) * 1e3,
        p99(&difference(&after, &before)) * 1e3,
        p99(&difference(&end, &after)) * 1e3,
        hosts[0].handlers[0].longest_swap_seconds * 1e9
    );

    let (_, _, redelivered) = service.consumer_state().await.unwrap();
    assert_eq!(redelivered, 0, "no event was delivered twice");
    assert_eq!(
        service
            .metric(&format!(
                "switchyard_events_total{{handler=\"{HANDLER}\",outcome=\"ack\"}}"
            ))
            .await,
        Some(f64::from((total + 2 * baseline_events) as u32)),
        "each event handled exactly once, and acked"
    );
    let reloads = service
        .metric(&series("plugin_reloads", "ok"))
        .await
        .unwrap_or(0.0);
    eprintln!("{swaps} file replacements, {reloads} swaps while {total} events flowed");
    assert!(reloads >= 10.0, "only {reloads} swaps happened");
    assert!(service.dead_letters().await.is_empty());
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_refused_while_the_live_version_keeps_serving() {
    let _servers = services::shared().await;
    let mut valkey = services::valkey().await;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/story-transitions.fixtures.jsonl");
    let (_dir, path) = plugin_copy(STORY_TRANSITIONS);
    let service = TestService::start(Options {
        plugin: path.display().to_string(),
        http: true,
        fixtures: Some(fixtures.display().to_string()),
        ..Options::default()
    })
    .await;

    let broken: [(&str, Vec<u8>); 4] = [
        ("not a component", b"\0asm\x0d\0\x01\0garbage".to_vec()),
        (
            "half-written",
            std::fs::read(STORY_TRANSITIONS).unwrap()[..1000].to_vec(),
        ),
        ("wrong world", std::fs::read(WRONG_WORLD).unwrap()),
        // Acks everything, so it fails the fixtures that expect rejects.
        ("fails its fixtures", std::fs::read(HOSTILE).unwrap()),
    ];
    for (round, (what, bytes)) in broken.iter().enumerate() {
        replace(&path, bytes);
        let refused = (round + 1) as f64;
        services::eventually(
            Duration::from_secs(30),
            &format!("{what} version refused"),
            || async {
                match service.metric(&series("plugin_reloads", "refused")).await {
                    Some(n) if n >= refused => Ok(()),
                    n => Err(format!("refused count {n:?}")),
                }
            },
        )
        .await;
        // The live version still does the real work.
        let story = services::unique("LIVE-");
        let key = format!("context:{story}");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("v")
            .query_async(&mut valkey)
            .await
            .unwrap();
        service.publish(transition(&story, "t")).await;
        services::eventually(
            Duration::from_secs(30),
            &format!("key deleted after the {what} push"),
            || async {
                match existing(&mut valkey.clone(), std::slice::from_ref(&key)).await? {
                    0 => Ok(()),
                    _ => Err("key still there".to_string()),
                }
            },
        )
        .await;
    }
    assert_eq!(
        service
            .metric(&series("plugin_reloads", "ok"))
            .await
            .unwrap_or(0.0),
        0.0
    );

    // A good version after the bad ones goes live.
    replace(&path, &story_transitions_variant(9));
    services::eventually(
        Duration::from_secs(30),
        "good version swapped in",
        || async {
            match service.metric(&series("plugin_reloads", "ok")).await {
                Some(n) if n >= 1.0 => Ok(()),
                n => Err(format!("ok count {n:?}")),
            }
        },
    )
    .await;
    service.settled(Duration::from_secs(30)).await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_version_is_refused_once_until_the_file_changes() {
    let _servers = services::shared().await;
    let (_dir, path) = plugin_copy(STORY_TRANSITIONS);
    let service = TestService::start(Options {
        plugin: path.display().to_string(),
        http: true,
        ..Options::default()
    })
    .await;
    let refused_count = || async {
        service
            .metric(&series("plugin_reloads", "refused"))
            .await
            .unwrap_or(0.0)
    };
    let broken = b"\0asm\x0d\0\x01\0garbage".to_vec();
    replace(&path, &broken);
    services::eventually(
        Duration::from_secs(30),
        "broken version refused",
        || async {
            match refused_count().await {
                n if n >= 1.0 => Ok(()),
                n => Err(format!("refused count {n}")),
            }
        },
    )
    .await;
    // Several poll periods, and the same bytes written again: nothing new
    // to validate, so nothing is refused again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    replace(&path, &broken);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refused_count().await, 1.0);

    // Other bytes are a new version, validated (and refused) once.
    replace(&path, &std::fs::read(STORY_TRANSITIONS).unwrap()[..1000]);
    services::eventually(
        Duration::from_secs(30),
        "second version refused",
        || async {
            match refused_count().await {
                n if n >= 2.0 => Ok(()),
                n => Err(format!("refused count {n}")),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refused_count().await, 2.0);
    service.stop().await;
}
