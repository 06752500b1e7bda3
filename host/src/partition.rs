//! Partitions: how a partitioned handler's subject is mapped into N
//! partitions by NATS itself.
//!
//! A handler with `partitions = N` names one subject pattern (say
//! `stories.*.transitioned`) and the token that carries its key
//! (`order_key_subject_token = 1`). The source stream then stores every
//! message on that pattern with its partition appended as one more token,
//! through the stream's own subject transform:
//!
//! ```text
//! stories.*.transitioned  ->  stories.{{wildcard(1)}}.transitioned.{{partition(N,1)}}
//! stories.42.transitioned is stored as stories.42.transitioned.5
//! ```
//!
//! NATS hashes the key token, so every event of one key lands in one
//! partition, and partition `p` is one durable consumer filtering
//! `stories.*.transitioned.p`. The partition goes last so that every token
//! before it keeps its index: order keys, plugins and dead letters read
//! the subject as the producer wrote it, plus one token.
//!
//! What follows from NATS doing the mapping:
//!
//! - A producer must put the key in the subject. A key carried only in the
//!   payload cannot be partitioned this way; such a handler stays on one
//!   host (`exclusive = true`) for order across hosts.
//! - The mapping is fixed by the stream. Messages stored before the
//!   stream had it keep their subjects and are not seen by the partition
//!   consumers; changing N remaps keys, so the host refuses a stream
//!   whose transform differs from the configuration instead of changing it.
//! - A stream has one subject transform: the partitioned handlers of one
//!   stream share one subject pattern and one partition count.

/// One partitioned subject: the stream transform and each partition's
/// filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The subject producers publish on, with `*` at the key token.
    pub subject: String,
    /// The 0-based index of the token that carries the key.
    pub key_token: usize,
    /// How many partitions.
    pub count: u32,
}

impl Mapping {
    /// The mapping of a handler's `subjects` (exactly one pattern, with `*`
    /// at `key_token` and no `>`) into `count` partitions, or why not.
    pub fn new(subjects: &[String], key_token: u32, count: u32) -> Result<Mapping, String> {
        let [subject] = subjects else {
            return Err(format!(
                "a partitioned handler takes exactly one subject pattern, not {}",
                subjects.len()
            ));
        };
        let tokens: Vec<&str> = subject.split('.').collect();
        if tokens.contains(&">") {
            return Err(format!(
                "`{subject}`: a partitioned subject cannot end in `>`; name each token, with `*` \
                 where the key goes"
            ));
        }
        let key_token = key_token as usize;
        match tokens.get(key_token) {
            Some(&"*") => {}
            Some(token) => {
                return Err(format!(
                    "`{subject}`: token {key_token} (`{token}`) carries the key, so it must be `*`"
                ));
            }
            None => {
                return Err(format!(
                    "`{subject}` has {} tokens; order_key_subject_token {key_token} is past its end",
                    tokens.len()
                ));
            }
        }
        if !(1..=1024).contains(&count) {
            return Err(format!("{count} partitions: must be between 1 and 1024"));
        }
        Ok(Mapping {
            subject: subject.clone(),
            key_token,
            count,
        })
    }

    /// The stream's subject transform source: the subject pattern.
    pub fn source(&self) -> &str {
        &self.subject
    }

    /// The stream's subject transform destination: every `*` carried over,
    /// and the key token's partition appended.
    pub fn destination(&self) -> String {
        let mut wildcard = 0;
        let mut key_wildcard = 0;
        let mut tokens: Vec<String> = Vec::new();
        for (index, token) in self.subject.split('.').enumerate() {
            if token == "*" {
                wildcard += 1;
                if index == self.key_token {
                    key_wildcard = wildcard;
                }
                tokens.push(format!("{{{{wildcard({wildcard})}}}}"));
            } else {
                tokens.push(token.to_string());
            }
        }
        tokens.push(format!("{{{{partition({},{key_wildcard})}}}}", self.count));
        tokens.join(".")
    }

    /// The subjects partition `partition` holds, as stored.
    pub fn filter(&self, partition: u32) -> String {
        format!("{}.{partition}", self.subject)
    }

    /// The durable consumer of one partition.
    pub fn durable(durable: &str, partition: u32) -> String {
        format!("{durable}-p{partition}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects(one: &str) -> Vec<String> {
        vec![one.to_string()]
    }

    #[test]
    fn the_key_token_is_hashed_and_the_partition_appended() {
        let mapping = Mapping::new(&subjects("orders.*.eu.*"), 3, 8).unwrap();
        assert_eq!(mapping.source(), "orders.*.eu.*");
        assert_eq!(
            mapping.destination(),
            "orders.{{wildcard(1)}}.eu.{{wildcard(2)}}.{{partition(8,2)}}"
        );
        assert_eq!(mapping.filter(5), "orders.*.eu.*.5");
        assert_eq!(Mapping::durable("orders", 5), "orders-p5");
    }

    #[test]
    fn a_subject_that_cannot_carry_the_key_is_refused_saying_why() {
        let refused = |subject: &[&str], token: u32| {
            let subjects: Vec<String> = subject.iter().map(ToString::to_string).collect();
            Mapping::new(&subjects, token, 4).unwrap_err()
        };
        assert!(refused(&["a.*", "b.*"], 1).contains("exactly one subject pattern"));
        assert!(refused(&["a.*.>"], 1).contains("cannot end in `>`"));
        assert!(refused(&["a.b.c"], 1).contains("token 1 (`b`) carries the key"));
        assert!(refused(&["a.*"], 2).contains("past its end"));
        assert!(Mapping::new(&subjects("a.*"), 1, 0).is_err());
    }
}
