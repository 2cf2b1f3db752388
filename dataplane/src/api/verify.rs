//! Batch verification of HTTP posts.
//!
//! ```text
//!  handler ──(Message, oneshot)──> queue ≤ HTTP_VERIFY_QUEUE_MAX ──> verifier thread
//!     ▲        (full: the handler waits for room)                  │ drains ≤ HTTP_VERIFY_BATCH_MAX,
//!     └──────────── Result<VerifiedMessage, MessageError> <─────────┘ one verify_batch per drain
//! ```
//!
//! Each post arrives on its own request, so the handlers hand their messages to one verifier
//! thread instead of verifying inline: the Ed25519 work leaves the tokio workers, and whatever
//! queued while a batch ran is verified together in the next one. There are no timers: a lone
//! post is verified at once, alone. The answers are those of [`VerifiedMessage::verify`] for each
//! message alone ([`verify_batch`] guarantees it), so one forged post never gets another refused.
//!
//! One thread, not `spawn_blocking` or a pool: batching needs a single consumer to gather the
//! queue, one core of batched Ed25519 verifies ~30,000 messages/s (several times what the rest of
//! the HTTP path sustains on this node), and a dedicated thread never waits behind the blocking
//! pool's store work. The thread ends when the last [`Verifier`] handle is dropped.

use std::sync::Arc;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

use crate::message::{Message, MessageError, VerifiedMessage, verify_batch};
use crate::node::NodeError;

/// Most posts waiting for verification. Four batches: enough to start the next batch at once
/// while one runs; beyond it handlers wait for room (backpressure) and their clients with them.
/// The queue adds no memory of its own: a queued message is the one its handler read, so posts
/// in flight stay bounded by `http-connections-max` × `body-bytes-max` as before.
pub const HTTP_VERIFY_QUEUE_MAX: usize = 4 * HTTP_VERIFY_BATCH_MAX;
/// Most posts verified in one batch, as QUIC's `VERIFY_BATCH_MAX`: Ed25519 batch verification
/// amortizes well up to ~64, and a forged post costs its batch a check of each signature alone.
pub const HTTP_VERIFY_BATCH_MAX: usize = 64;

const _: () = assert!(HTTP_VERIFY_BATCH_MAX >= 1);
const _: () = assert!(HTTP_VERIFY_BATCH_MAX <= HTTP_VERIFY_QUEUE_MAX);

/// A post waiting for verification, with where its answer goes.
struct Job {
    message: Message,
    reply: oneshot::Sender<Result<VerifiedMessage, MessageError>>,
}

/// The handlers' side of the verifier: cheap to clone; the thread stops when all are dropped.
#[derive(Clone)]
pub struct Verifier {
    jobs: mpsc::Sender<Job>,
    metrics: Arc<VerifyMetrics>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// Starts the verifier thread, pinned to logical CPU `cpu` when one is given.
    ///
    /// # Errors
    /// [`NodeError::Unavailable`] when the thread cannot be spawned.
    pub fn start(cpu: Option<usize>) -> Result<(Self, std::thread::JoinHandle<()>), NodeError> {
        let (verifier, mut queue) = Self::unstarted();
        let thread = std::thread::Builder::new()
            .name("ferrobeam-http-verify".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    crate::node::cores::pin_current_thread(cpu);
                }
                while queue.drain().is_some() {}
            })
            .map_err(|e| NodeError::Unavailable(format!("starting the HTTP verifier: {e}")))?;
        Ok((verifier, thread))
    }

    /// A verifier and its queue, drained by the caller (tests drive it step by step).
    fn unstarted() -> (Self, Queue) {
        let (jobs, receiver) = mpsc::channel(HTTP_VERIFY_QUEUE_MAX);
        let metrics = Arc::new(VerifyMetrics::new());
        let queue = Queue {
            receiver,
            batch: Vec::with_capacity(HTTP_VERIFY_BATCH_MAX),
            batch_size: metrics.batch_size.clone(),
        };
        (Self { jobs, metrics }, queue)
    }

    /// Verifies `message` in the next batch; waits for room while the queue is full.
    ///
    /// # Errors
    /// [`NodeError::Message`] with exactly the refusal of [`VerifiedMessage::verify`];
    /// [`NodeError::Unavailable`] when the verifier thread is gone.
    pub async fn verify(&self, message: Message) -> Result<VerifiedMessage, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { message, reply })
            .await
            .map_err(|_| NodeError::Unavailable("the HTTP verifier stopped".into()))?;
        let verified = answer
            .await
            .map_err(|_| NodeError::Unavailable("the HTTP verifier dropped a message".into()))?;
        Ok(verified?)
    }

    /// The verifier's metrics in the text exposition format (without the `# EOF` line).
    pub fn render(&self) -> String {
        self.metrics.render()
    }
}

/// The verifier thread's side: the receiving end and one batch's buffer.
struct Queue {
    receiver: mpsc::Receiver<Job>,
    batch: Vec<Job>,
    batch_size: Histogram,
}

impl Queue {
    /// Waits for at least one post, verifies every post queued by then (at most
    /// [`HTTP_VERIFY_BATCH_MAX`]) in one batch and answers each. Returns the batch's size, or
    /// `None` once every [`Verifier`] is dropped and the queue is empty.
    ///
    /// # Panics
    /// When called from inside an async runtime (it blocks).
    fn drain(&mut self) -> Option<usize> {
        debug_assert!(self.batch.is_empty());
        let received = self
            .receiver
            .blocking_recv_many(&mut self.batch, HTTP_VERIFY_BATCH_MAX);
        if received == 0 {
            return None;
        }
        assert!(received <= HTTP_VERIFY_BATCH_MAX);
        self.batch_size.observe(received as f64);
        let (messages, replies): (Vec<Message>, Vec<_>) = self
            .batch
            .drain(..)
            .map(|job| (job.message, job.reply))
            .unzip();
        let verified = verify_all(messages);
        assert_eq!(verified.len(), replies.len());
        for (reply, answer) in replies.into_iter().zip(verified) {
            // A handler whose client went away no longer needs its answer.
            let _ = reply.send(answer);
        }
        Some(received)
    }
}

/// One answer per message, in order: a lone message is checked alone (a batch of one would
/// only add the batch's overhead), several with one [`verify_batch`].
fn verify_all(messages: Vec<Message>) -> Vec<Result<VerifiedMessage, MessageError>> {
    if messages.len() > 1 {
        verify_batch(messages)
    } else {
        messages.into_iter().map(VerifiedMessage::verify).collect()
    }
}

/// `ferrobeam_http_verify_batch_size`: posts per verified batch (its `_count` is the batches,
/// its `_sum` the posts).
struct VerifyMetrics {
    registry: Registry,
    batch_size: Histogram,
}

impl VerifyMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ferrobeam");
        // Buckets 1, 2, 4, … 64 = HTTP_VERIFY_BATCH_MAX.
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 7));
        registry.register(
            "http_verify_batch_size",
            "HTTP posts per signature verification batch",
            batch_size.clone(),
        );
        Self {
            registry,
            batch_size,
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::message::Wallet;

    type Pending = Pin<Box<dyn Future<Output = Result<VerifiedMessage, NodeError>>>>;

    fn wallet(seed: u8) -> Wallet {
        let d = crate::message::b64(&[seed; 32]);
        Wallet::from_jwk(&serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "d": d })).unwrap()
    }

    /// Signed message `n`; every seventh is forged (a signed field changed after signing).
    fn post(n: usize) -> (Message, bool) {
        let n_int = i64::try_from(n).unwrap();
        let signed = wallet(u8::try_from(n % 5).unwrap() + 1)
            .sign(Message::new().with("n", n_int), &mut rand::rngs::OsRng);
        if n % 7 == 3 {
            let mut forged = signed.unsigned().with("n", n_int + 1);
            forged
                .push_commitment(signed.commitments()[0].clone())
                .unwrap();
            (forged, false)
        } else {
            (signed, true)
        }
    }

    /// One poll, without a runtime: the verifier's channels need none.
    fn poll(future: &mut Pending) -> Poll<Result<VerifiedMessage, NodeError>> {
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_full_queue_makes_posts_wait_and_batches_answer_each_post_alone() {
        let (verifier, mut queue) = Verifier::unstarted();
        let posts: Vec<(Message, bool)> = (0..=HTTP_VERIFY_QUEUE_MAX).map(post).collect();
        let mut pending: Vec<Pending> = posts
            .iter()
            .map(|(message, _)| {
                let verifier = verifier.clone();
                let message = message.clone();
                Box::pin(async move { verifier.verify(message).await }) as Pending
            })
            .collect();
        let mut answers: Vec<Option<Result<VerifiedMessage, NodeError>>> =
            pending.iter().map(|_| None).collect();
        let mut poll_unanswered = |pending: &mut [Pending]| {
            for (future, answer) in pending.iter_mut().zip(&mut answers) {
                if answer.is_none()
                    && let Poll::Ready(ready) = poll(future)
                {
                    *answer = Some(ready);
                }
            }
            answers.iter().filter(|a| a.is_some()).count()
        };
        // The first HTTP_VERIFY_QUEUE_MAX are queued and wait for answers; the last waits for room.
        assert_eq!(poll_unanswered(&mut pending), 0);
        assert_eq!(verifier.jobs.capacity(), 0);
        assert_eq!(queue.receiver.len(), HTTP_VERIFY_QUEUE_MAX);

        // A drain takes one full batch and answers it; the waiting post then gets in.
        assert_eq!(queue.drain(), Some(HTTP_VERIFY_BATCH_MAX));
        assert_eq!(poll_unanswered(&mut pending), HTTP_VERIFY_BATCH_MAX);
        assert_eq!(
            queue.receiver.len(),
            HTTP_VERIFY_QUEUE_MAX - HTTP_VERIFY_BATCH_MAX + 1
        );
        let mut sizes = vec![HTTP_VERIFY_BATCH_MAX];
        while !queue.receiver.is_empty() {
            sizes.push(queue.drain().unwrap());
        }
        assert_eq!(sizes, [64, 64, 64, 64, 1]);
        assert_eq!(poll_unanswered(&mut pending), posts.len());

        for (answer, (message, valid)) in answers.into_iter().zip(&posts) {
            let answer = answer.expect("every post is answered once its batch ran");
            let alone = VerifiedMessage::verify(message.clone());
            assert_eq!(alone.is_ok(), *valid);
            match (answer, alone) {
                (Ok(batched), Ok(alone)) => assert_eq!(batched, alone),
                (Err(NodeError::Message(batched)), Err(alone)) => {
                    assert_eq!(batched.to_string(), alone.to_string());
                }
                (answer, alone) => panic!("batched {answer:?}, alone {alone:?}"),
            }
        }
        let text = verifier.render();
        assert!(
            text.contains("ferrobeam_http_verify_batch_size_count 5"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ferrobeam_http_verify_batch_size_sum {}",
                HTTP_VERIFY_QUEUE_MAX + 1
            )),
            "{text}"
        );
    }

    #[test]
    fn a_lone_post_is_verified_alone_and_unsigned_is_refused_as_before() {
        let (verifier, mut queue) = Verifier::unstarted();
        let mut unsigned: Pending = {
            let verifier = verifier.clone();
            Box::pin(async move { verifier.verify(Message::new().with("n", 1)).await })
        };
        assert!(poll(&mut unsigned).is_pending());
        assert_eq!(queue.drain(), Some(1));
        assert!(matches!(
            poll(&mut unsigned),
            Poll::Ready(Err(NodeError::Message(MessageError::Unsigned)))
        ));
    }

    #[test]
    fn the_thread_verifies_and_ends_when_the_last_handle_is_dropped() {
        let (verifier, thread) = Verifier::start(None).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (message, _) = post(1);
        let verified = runtime.block_on(verifier.verify(message.clone())).unwrap();
        assert_eq!(verified.id(), message.id());
        drop(verifier);
        thread.join().unwrap();
    }

    #[test]
    fn a_stopped_verifier_answers_unavailable() {
        let (verifier, queue) = Verifier::unstarted();
        drop(queue);
        let mut answer: Pending = Box::pin(async move { verifier.verify(post(1).0).await });
        assert!(matches!(
            poll(&mut answer),
            Poll::Ready(Err(NodeError::Unavailable(_)))
        ));
    }
}
