//! The decision every gdrx receiver makes about a sender's connect request: its private data
//! must be a [`Hello`], the messages it announces must fit the receive buffers, and then the
//! receiver's own policy (peer limits, an accept callback, a WRITE window per sender) decides.
//! The result is a [`gdrx_verbs::cm::Admission`] that [`ConnectRequest::admit`] or a
//! [`gdrx_verbs::cm::Gather`] executes; a refused sender reads the reason in its connection error.
//!
//! [`ConnectRequest::admit`]: gdrx_verbs::ConnectRequest::admit

use gdrx_verbs::cm::Admission;
use gdrx_wire::{CreditWord, Hello, RemoteWindow, Welcome};

/// The prefix of the reply a gdrx receiver sends with a refusal (`gdrx: <reason>`).
pub const REPLY_PREFIX: &str = "gdrx";

/// Decides about a connect request carrying `private` data, for a receiver whose buffers hold
/// `recv_buf` bytes.
///
/// Refused (with the reason as the reply): private data that is not a gdrx [`Hello`]
/// ("malformed hello"), a Hello announcing messages larger than `recv_buf`, and whatever
/// `policy` refuses with `Err(reason)`. Accepted: the rest, with a [`Welcome`] giving
/// `recv_buf` and the window `policy` returned.
pub fn admit_hello(
    private: &[u8],
    recv_buf: u32,
    policy: impl FnOnce(&Hello) -> Result<Option<RemoteWindow>, String>,
) -> Admission<Hello> {
    admit_hello_with_credits(private, recv_buf, None, policy)
}

/// [`admit_hello`] for a receiver that grants credits: an accepted sender's Welcome carries
/// `credits` too.
pub fn admit_hello_with_credits(
    private: &[u8],
    recv_buf: u32,
    credits: Option<CreditWord>,
    policy: impl FnOnce(&Hello) -> Result<Option<RemoteWindow>, String>,
) -> Admission<Hello> {
    let hello = match Hello::decode(private) {
        Ok(h) => h,
        Err(e) => {
            let reason = format!(
                "malformed hello: the connect request's private data is not a gdrx Hello ({e})"
            );
            return Admission::refuse(REPLY_PREFIX, reason);
        }
    };
    if hello.max_msg > recv_buf {
        return Admission::refuse(
            REPLY_PREFIX,
            format!(
                "the sender announces messages of up to {} bytes, but the receive buffers hold \
                 {recv_buf}: give the receiver larger slots",
                hello.max_msg
            ),
        );
    }
    match policy(&hello) {
        Ok(window) => Admission::Accept {
            reply: Welcome {
                flags: 0,
                recv_buf,
                window,
                credits,
            }
            .encode()
            .to_vec(),
            peer: hello,
        },
        Err(reason) => Admission::refuse(REPLY_PREFIX, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(tag: u32, max: u32) -> Vec<u8> {
        let mut b = Hello {
            flags: 0,
            conn_tag: tag,
            max_msg: max,
        }
        .encode()
        .to_vec();
        b.resize(56, 0); // as RDMA CM delivers it
        b
    }

    fn refusal(a: Admission<Hello>) -> (String, String) {
        match a {
            Admission::Refuse { reply, reason } => (String::from_utf8(reply).unwrap(), reason),
            Admission::Accept { peer, .. } => panic!("accepted {peer:?}"),
        }
    }

    #[test]
    fn malformed_private_data_is_refused_saying_so() {
        let mut called = false;
        let (reply, reason) = refusal(admit_hello(b"GET / HTTP/1.1", 4096, |_| {
            called = true;
            Ok(None)
        }));
        assert!(!called, "the policy only sees Hellos");
        assert!(reply.starts_with("gdrx: malformed hello"), "{reply}");
        assert!(reason.contains("not a gdrx Hello"), "{reason}");
        let (_, reason) = refusal(admit_hello(&[], 4096, |_| Ok(None)));
        assert!(reason.contains("malformed hello"), "{reason}");
    }

    #[test]
    fn messages_larger_than_the_buffers_are_refused() {
        let (reply, reason) = refusal(admit_hello(&hello(1, 8192), 4096, |_| Ok(None)));
        assert!(reason.contains("up to 8192 bytes"), "{reason}");
        assert!(reason.contains("hold 4096"), "{reason}");
        assert!(reply.starts_with("gdrx: the sender announces"), "{reply}");
        // Exactly the buffer size, and "not said" (0), are fine.
        assert!(matches!(
            admit_hello(&hello(1, 4096), 4096, |_| Ok(None)),
            Admission::Accept { .. }
        ));
        assert!(matches!(
            admit_hello(&hello(1, 0), 4096, |_| Ok(None)),
            Admission::Accept { .. }
        ));
    }

    #[test]
    fn the_policy_refuses_or_gives_a_window() {
        let (reply, reason) = refusal(admit_hello(&hello(7, 64), 4096, |h| {
            Err(format!("tag {} is not expected", h.conn_tag))
        }));
        assert_eq!(reason, "tag 7 is not expected");
        assert_eq!(reply, "gdrx: tag 7 is not expected");

        let w = RemoteWindow {
            addr: 0x1000,
            len: 4096,
            rkey: 9,
        };
        match admit_hello(&hello(7, 64), 4096, |h| {
            assert_eq!(h.conn_tag, 7);
            Ok(Some(w))
        }) {
            Admission::Accept { reply, peer } => {
                assert_eq!(peer.conn_tag, 7);
                let welcome = Welcome::decode(&reply).unwrap();
                assert_eq!(welcome.recv_buf, 4096);
                assert_eq!(welcome.window, Some(w));
            }
            other => panic!("{other:?}"),
        }
    }
}
