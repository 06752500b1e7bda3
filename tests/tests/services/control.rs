//! The control plane on a fleet: a push reaches every host sharing the
//! durable, a rollback restores the previous digest, a broken push is
//! refused by every host while the live version keeps serving.

use std::time::Duration;

use switchyard::fleet::control::ControlPlane;
use switchyard::runtime::Digest;
use switchyard_tests::artifacts::{HOSTILE, story_transitions_variant};
use switchyard_tests::services;

use crate::support::{
    HANDLER, Names, Options, TestService, default_config, transition, transitions_at,
};

const OBJECT: &str = "story-transitions";
const WAIT: Duration = Duration::from_secs(30);

/// Digests the hosts answering on the control subject run for the handler.
async fn fleet_digests(names: &Names) -> Vec<String> {
    let hosts = services::fleet_status(&names.control_subject).await;
    hosts
        .iter()
        .flat_map(|h| {
            h.handlers
                .iter()
                .filter(|s| s.handler == HANDLER)
                .map(|s| s.digest.clone())
        })
        .collect()
}

async fn fleet_on(names: &Names, digest: &str, hosts: usize) {
    services::eventually(WAIT, &format!("{hosts} hosts on {digest}"), || async {
        let digests = fleet_digests(names).await;
        if digests.len() == hosts && digests.iter().all(|d| d == digest) {
            Ok(())
        } else {
            Err(format!("{digests:?}"))
        }
    })
    .await;
}

/// The control plane of `names`, with `first` pushed as the live version
/// and one host serving `/metrics` running it.
async fn one_host_on(names: &Names, first: &[u8]) -> (ControlPlane, TestService) {
    let js = services::jetstream().await;
    let control = ControlPlane::open(&js, &default_config(names).nats)
        .await
        .unwrap();
    control.push(OBJECT, first, None, false).await.unwrap();
    let host = TestService::start_named(
        names.clone(),
        Options {
            plugin_object: Some(OBJECT.to_string()),
            http: true,
            ..Options::default()
        },
    )
    .await;
    fleet_on(names, Digest::of(first).as_str(), 1).await;
    (control, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_reaches_two_hosts_and_rollback_restores_the_previous_digest() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let names = Names::new("t");
    let js = services::jetstream().await;
    let config = default_config(&names);
    let control = ControlPlane::open(&js, &config.nats).await.unwrap();
    let (first, second) = (story_transitions_variant(1), story_transitions_variant(2));
    control.push(OBJECT, &first, None, false).await.unwrap();

    let options = || Options {
        plugin_object: Some(OBJECT.to_string()),
        ..Options::default()
    };
    let host_a = TestService::start_named(names.clone(), options()).await;
    let host_b = TestService::start_named(names.clone(), options()).await;
    fleet_on(&names, Digest::of(&first).as_str(), 2).await;

    let timestamp = services::unique("fleet#");
    for i in 0..200 {
        if i == 100 {
            control.push(OBJECT, &second, None, false).await.unwrap();
        }
        host_a
            .publish(transition(&format!("FLEET-{i}"), &timestamp))
            .await;
    }
    fleet_on(&names, Digest::of(&second).as_str(), 2).await;

    let history = control.history(OBJECT).await.unwrap();
    let digests: Vec<&str> = history.iter().map(|v| v.digest.as_str()).collect();
    assert_eq!(
        digests,
        [Digest::of(&first).as_str(), Digest::of(&second).as_str()]
    );
    let restored = control.rollback(OBJECT, None).await.unwrap();
    assert_eq!(restored.digest, Digest::of(&first).as_str());
    fleet_on(&names, Digest::of(&first).as_str(), 2).await;

    services::eventually(
        WAIT,
        "every event handled once across both hosts",
        || async {
            match transitions_at(&graph, &timestamp).await? {
                200 => Ok(()),
                n => Err(format!("{n} of 200 nodes")),
            }
        },
    )
    .await;
    host_a.settled(WAIT).await;
    let (_, _, redelivered) = host_a.consumer_state().await.unwrap();
    assert_eq!(redelivered, 0);
    host_a.stop().await;
    host_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_version_failing_its_fixtures_is_refused_by_every_host() {
    let _servers = services::shared().await;
    let names = Names::new("t");
    let good = story_transitions_variant(1);
    let (control, host) = one_host_on(&names, &good).await;

    // Bypass the CLI's own check: the host must refuse on its own.
    let fixtures = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/story-transitions.fixtures.jsonl"
    ))
    .unwrap();
    let hostile = std::fs::read(HOSTILE).unwrap();
    control
        .push(OBJECT, &hostile, Some(&fixtures), false)
        .await
        .unwrap();
    let refused =
        format!("switchyard_plugin_reloads_total{{handler=\"{HANDLER}\",result=\"refused\"}}");
    services::eventually(WAIT, "the bad version refused", || async {
        match host.metric(&refused).await {
            Some(n) if n >= 1.0 => Ok(()),
            n => Err(format!("{n:?}")),
        }
    })
    .await;
    let hosts = services::fleet_status(&names.control_subject).await;
    let status = &hosts[0].handlers[0];
    assert_eq!(
        status.digest,
        Digest::of(&good).as_str(),
        "the live version keeps serving"
    );
    let last = status.last_reload.as_ref().unwrap();
    assert_eq!(last["ok"], false);
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("failed its fixtures"),
        "{last}"
    );

    // And it still does the work.
    let timestamp = services::unique("after-refusal#");
    host.publish(transition("AFTER-REFUSAL", &timestamp)).await;
    host.settled(WAIT).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_candidate_reports_a_planted_difference_without_side_effects() {
    let _servers = services::shared().await;
    let mut valkey = services::valkey().await;
    let graph = services::neo4j().await;
    let names = Names::new("t");
    let live = story_transitions_variant(1);
    let (control, host) = one_host_on(&names, &live).await;

    // The candidate acks every event and deletes nothing: a planted bug.
    let candidate = std::fs::read(HOSTILE).unwrap();
    control.push(OBJECT, &candidate, None, true).await.unwrap();
    let shadow_digest = Digest::of(&candidate).to_string();
    services::eventually(WAIT, "candidate running in shadow", || async {
        let hosts = services::fleet_status(&names.control_subject).await;
        match hosts.first().and_then(|h| h.handlers[0].shadow.clone()) {
            Some(shadow) if shadow.digest == shadow_digest => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let story = services::unique("SHADOW-");
    let keys = [format!("context:{story}"), format!("context:{story}:dev")];
    services::set_keys(&mut valkey, &keys, "v").await;
    let timestamp = services::unique("shadow#");
    host.publish(transition(&story, &timestamp)).await;
    host.settled(WAIT).await;

    let differ =
        format!("switchyard_shadow_events_total{{handler=\"{HANDLER}\",result=\"differ\"}}");
    assert_eq!(host.metric(&differ).await, Some(1.0));
    let hosts = services::fleet_status(&names.control_subject).await;
    let shadow = hosts[0].handlers[0].shadow.clone().unwrap();
    assert_eq!((shadow.compared, shadow.differing), (1, 1));
    let difference = shadow.last_difference.unwrap();
    assert!(
        difference.contains("keys deleted: live 2, candidate 0"),
        "{difference}"
    );
    assert!(difference.contains("nodes written"), "{difference}");
    // The live version's effects happened, exactly once.
    assert_eq!(
        crate::support::existing(&mut valkey, &keys).await.unwrap(),
        0
    );
    assert_eq!(transitions_at(&graph, &timestamp).await.unwrap(), 1);

    let promoted = control.promote(OBJECT).await.unwrap();
    assert_eq!(promoted.digest, shadow_digest);
    fleet_on(&names, &shadow_digest, 1).await;
    host.stop().await;
}
