//! The partition mapping on the real NATS: the stream stores each message
//! of the partitioned subject with its partition appended, every event of
//! one key lands in one partition, and a stream partitioned otherwise is
//! refused rather than remapped.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use switchyard::config::NatsConfig;
use switchyard::delivery::streams::ensure_streams;
use switchyard::partition::Mapping;
use switchyard_tests::services;

fn nats_config(id: &str) -> NatsConfig {
    let toml = format!(
        "url = {url:?}\nstream = \"PART_{id}\"\nstream_subjects = [\"{id}.>\"]\n\
         dead_letter_stream = \"PARTDEAD_{id}\"\ndead_letter_subject = \"partdead.{id}\"\n",
        url = services::nats_url(),
    );
    toml::from_str(&toml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_stores_each_key_in_one_partition_and_refuses_a_different_mapping() {
    let _shared = services::shared().await;
    let id = services::unique("part");
    let config = nats_config(&id);
    let js = services::jetstream().await;
    let subject = vec![format!("{id}.orders.*.placed")];
    let four = Mapping::new(&subject, 2, 4).unwrap();
    ensure_streams(&js, &config, Some(&four)).await.unwrap();
    // Asking again with the same mapping changes nothing.
    ensure_streams(&js, &config, Some(&four)).await.unwrap();

    for round in 0..3 {
        for key in 0..40 {
            js.publish(
                format!("{id}.orders.k{key}.placed"),
                format!("{round}").into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    js.publish(format!("{id}.other.thing"), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let stream = js.get_stream(&config.stream).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(200).messages().await.unwrap();
    let mut partitions_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut others = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let tokens: Vec<&str> = message.subject.split('.').collect();
        if tokens.get(1) == Some(&"orders") {
            assert_eq!(
                tokens.len(),
                5,
                "the partition appended: {}",
                message.subject
            );
            assert_eq!(tokens[3], "placed");
            let partition: u32 = tokens[4].parse().unwrap();
            assert!(partition < 4, "{}", message.subject);
            partitions_of
                .entry(tokens[2].to_string())
                .or_default()
                .insert(tokens[4].to_string());
        } else {
            others.push(message.subject.to_string());
        }
    }
    assert_eq!(partitions_of.len(), 40, "every key stored");
    for (key, partitions) in &partitions_of {
        assert_eq!(
            partitions.len(),
            1,
            "{key} is in one partition: {partitions:?}"
        );
    }
    let used: BTreeSet<&String> = partitions_of.values().flatten().collect();
    assert_eq!(used.len(), 4, "40 keys use every partition: {used:?}");
    assert_eq!(
        others,
        [format!("{id}.other.thing")],
        "other subjects as published"
    );
    for (key, partitions) in partitions_of.iter().take(3) {
        let filter = four.filter(partitions.iter().next().unwrap().parse().unwrap());
        assert!(
            switchyard::config::subject_matches(
                &filter,
                &format!(
                    "{id}.orders.{key}.placed.{}",
                    partitions.iter().next().unwrap()
                )
            ),
            "{filter}"
        );
    }

    let eight = Mapping::new(&subject, 2, 8).unwrap();
    let error = ensure_streams(&js, &config, Some(&eight))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("stream PART_{id} maps `{id}.orders.*.placed`"))
            && error.contains("{{partition(4,1)}}")
            && error.contains("{{partition(8,1)}}")
            && error.contains("drain the stream"),
        "{error}"
    );
    let info = js
        .get_stream(&config.stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.subject_transform.unwrap().destination,
        four.destination(),
        "the stream keeps its mapping"
    );
}
