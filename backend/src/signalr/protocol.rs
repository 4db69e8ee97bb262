//! The JSON hub protocol, the server's side of it: records end in the 0x1e separator;
//! the first is the handshake request (answered `{}`), then invocations (type 1) of
//! `Echo(x)` and `Whoami()` answered with a completion (type 3), pings (6) ignored, and
//! a close (7) that ends the connection. Pure: it says what to send and whether to close.

use serde_json::{json, Value};

use super::registry::RS;

/// Who the hub says it is, for `Whoami()`.
pub(crate) struct Who<'a> {
    pub(crate) server: &'a str,
    pub(crate) ns: &'a str,
}

/// What the records of one delivery call for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Messages for the client, each ending in the separator.
    pub(crate) out: String,
    /// Invocations answered.
    pub(crate) invocations: u64,
    /// The connection ends: the client closed, or broke the protocol (`error`).
    pub(crate) close: Option<Option<String>>,
}

/// Consumes every complete record in `inbox` (an incomplete tail stays for the next
/// delivery) and says what to answer. `handshaken` is the connection's state.
pub(crate) fn receive(inbox: &mut Vec<u8>, handshaken: &mut bool, who: &Who<'_>) -> Reply {
    let mut reply = Reply::default();
    let Some(last) = inbox.iter().rposition(|&b| b == RS as u8) else {
        return reply;
    };
    let complete: Vec<u8> = inbox.drain(..=last).collect();
    for record in complete.split(|&b| b == RS as u8).filter(|r| !r.is_empty()) {
        if reply.close.is_some() {
            break;
        }
        let parsed = serde_json::from_slice::<Value>(record);
        let step = match (parsed, *handshaken) {
            (Ok(v), false) => handshake(&v, handshaken),
            (Ok(v), true) => message(&v, who, &mut reply.invocations),
            (Err(_), _) => Step::Close(Some("Invalid JSON in a hub message.".into())),
        };
        match step {
            Step::Send(v) => push(&mut reply.out, &v),
            Step::Nothing => {}
            Step::Close(error) => reply.close = Some(error),
            Step::SendAndClose(v, error) => {
                push(&mut reply.out, &v);
                reply.close = Some(error);
            }
        }
    }
    reply
}

enum Step {
    Send(Value),
    Nothing,
    Close(Option<String>),
    SendAndClose(Value, Option<String>),
}

fn push(out: &mut String, v: &Value) {
    out.push_str(&v.to_string());
    out.push(RS);
}

/// `{"protocol":"json","version":1}` -> `{}`; any other protocol -> `{"error":…}` and close.
fn handshake(v: &Value, handshaken: &mut bool) -> Step {
    match (v["protocol"].as_str(), v["version"].as_u64()) {
        (Some("json"), Some(1)) => {
            *handshaken = true;
            Step::Send(json!({}))
        }
        (protocol, version) => {
            let error = format!(
                "Requested protocol '{}' version {} is not available: this test hub speaks json 1.",
                protocol.unwrap_or("?"),
                version.map_or_else(|| "?".into(), |v| v.to_string())
            );
            Step::SendAndClose(json!({ "error": error }), Some(error))
        }
    }
}

fn message(v: &Value, who: &Who<'_>, invocations: &mut u64) -> Step {
    match v["type"].as_u64() {
        Some(1) => {
            let result = invoke(v["target"].as_str().unwrap_or(""), &v["arguments"], who);
            *invocations += 1;
            // Without an invocationId the caller wants no answer.
            let Some(id) = v["invocationId"].as_str() else {
                return Step::Nothing;
            };
            Step::Send(match result {
                Ok(r) => json!({"type": 3, "invocationId": id, "result": r}),
                Err(e) => json!({"type": 3, "invocationId": id, "error": e}),
            })
        }
        Some(4) => match v["invocationId"].as_str() {
            Some(id) => Step::Send(json!({
                "type": 3, "invocationId": id, "error": "This test hub has no streaming methods."
            })),
            None => Step::Nothing,
        },
        // A cancel, a completion (client results), a ping, acks and sequence messages
        // (stateful reconnect, never negotiated): nothing to answer.
        Some(3 | 5 | 6 | 8 | 9) => Step::Nothing,
        Some(7) => Step::Close(None),
        _ => Step::Close(Some("Unknown hub message type.".into())),
    }
}

fn invoke(target: &str, args: &Value, who: &Who<'_>) -> Result<Value, String> {
    let args = args.as_array().map_or(&[][..], Vec::as_slice);
    match (target, args) {
        ("Echo", [x]) => Ok(x.clone()),
        ("Whoami", []) => Ok(json!({"server": who.server, "ns": who.ns})),
        ("Echo" | "Whoami", _) => Err(format!(
            "Failed to invoke '{target}' due to an error on the server: wrong number of arguments."
        )),
        _ => Err(format!(
            "Failed to invoke '{target}': this test hub has only Echo(x) and Whoami()."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHO: Who<'static> = Who {
        server: "backend-1",
        ns: "acme",
    };

    /// The messages of `out`, parsed (key order is serde_json's business).
    fn messages(out: &str) -> Vec<Value> {
        assert!(out.is_empty() || out.ends_with(RS), "{out:?}");
        out.split(RS)
            .filter(|m| !m.is_empty())
            .map(|m| serde_json::from_str(m).expect("json"))
            .collect()
    }

    fn run(input: &str, handshaken: &mut bool) -> Reply {
        let mut inbox = input.as_bytes().to_vec();
        receive(&mut inbox, handshaken, &WHO)
    }

    #[test]
    fn handshake_then_invocations() {
        let mut hs = false;
        let r = run(
            "{\"protocol\":\"json\",\"version\":1}\u{1e}\
             {\"type\":1,\"invocationId\":\"0\",\"target\":\"Echo\",\"arguments\":[\"hi\"]}\u{1e}\
             {\"type\":1,\"invocationId\":\"1\",\"target\":\"Whoami\",\"arguments\":[]}\u{1e}\
             {\"type\":6}\u{1e}",
            &mut hs,
        );
        assert!(hs);
        assert_eq!(r.invocations, 2);
        assert_eq!(r.close, None);
        assert_eq!(
            messages(&r.out),
            [
                json!({}),
                json!({"type": 3, "invocationId": "0", "result": "hi"}),
                json!({"type": 3, "invocationId": "1", "result": {"server": "backend-1", "ns": "acme"}}),
            ]
        );
    }

    #[test]
    fn an_incomplete_record_waits_for_the_rest() {
        let mut hs = true;
        let mut inbox = b"{\"type\":1,\"invocationId\":\"7\",\"target\":\"Ec".to_vec();
        assert_eq!(receive(&mut inbox, &mut hs, &WHO), Reply::default());
        inbox.extend_from_slice(b"ho\",\"arguments\":[42]}\x1e");
        let r = receive(&mut inbox, &mut hs, &WHO);
        assert_eq!(
            messages(&r.out),
            [json!({"type": 3, "invocationId": "7", "result": 42})]
        );
        assert!(inbox.is_empty());
    }

    #[test]
    fn close_unknown_and_bad_protocol() {
        let mut hs = true;
        assert_eq!(run("{\"type\":7}\u{1e}", &mut hs).close, Some(None));
        let r = run(
            "{\"type\":1,\"invocationId\":\"2\",\"target\":\"Nope\",\"arguments\":[]}\u{1e}",
            &mut hs,
        );
        assert!(messages(&r.out)[0]["error"].is_string(), "{}", r.out);
        assert!(matches!(
            run("{\"type\":99}\u{1e}", &mut hs).close,
            Some(Some(_))
        ));

        let mut hs = false;
        let r = run(
            "{\"protocol\":\"messagepack\",\"version\":1}\u{1e}",
            &mut hs,
        );
        assert!(!hs);
        assert!(messages(&r.out)[0]["error"].is_string(), "{}", r.out);
        assert!(matches!(r.close, Some(Some(_))));
    }
}
