//! Which frame is allowed in which phase of a connection. Pure.

use std::ops::RangeInclusive;

use proto::{ClientFrame, ErrorCode, PhoneNumber, Request};

/// Where a connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Nothing received yet: only `Hello` is allowed.
    AwaitHello,
    /// Hello done, not logged in: only auth requests and pings.
    Guest,
    /// Logged in as this user.
    LoggedIn(PhoneNumber),
    /// Closing: further frames are ignored.
    Closing,
}

/// What to do with an incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A hello with a version we serve: answer `Welcome` in that version.
    Welcome {
        /// The client's version, which the connection then speaks.
        version: u16,
    },
    /// Serve the request.
    Serve,
    /// Answer with this error; close the connection if `close`.
    Refuse {
        /// The error.
        code: ErrorCode,
        /// Whether the connection must close.
        close: bool,
    },
    /// Drop silently (the connection is closing).
    Ignore,
}

fn allowed_before_login(request: &Request) -> bool {
    matches!(
        request,
        Request::RequestCode { .. }
            | Request::Verify { .. }
            | Request::VerifyWithPin { .. }
            | Request::Login { .. }
            | Request::Ping
            | Request::MintTestUsers { .. }
    )
}

/// Decides what `frame` may do in `phase`, for a node that serves the
/// protocol `versions`.
pub fn admit(phase: &Phase, frame: &ClientFrame, versions: RangeInclusive<u16>) -> Admission {
    match (phase, frame) {
        (Phase::Closing, _) => Admission::Ignore,
        (Phase::AwaitHello, ClientFrame::Hello { version, .. }) if versions.contains(version) => {
            Admission::Welcome { version: *version }
        }
        (Phase::AwaitHello, ClientFrame::Hello { .. }) => Admission::Refuse {
            code: ErrorCode::UnsupportedVersion,
            close: true,
        },
        (Phase::AwaitHello, ClientFrame::Request { .. } | ClientFrame::Ack { .. }) => {
            Admission::Refuse {
                code: ErrorCode::NotAuthenticated,
                close: true,
            }
        }
        (_, ClientFrame::Hello { .. }) => Admission::Refuse {
            code: ErrorCode::InvalidRequest,
            close: true,
        },
        (Phase::Guest, ClientFrame::Request { request, .. }) => {
            if allowed_before_login(request) {
                Admission::Serve
            } else {
                Admission::Refuse {
                    code: ErrorCode::NotAuthenticated,
                    close: true,
                }
            }
        }
        (Phase::Guest, ClientFrame::Ack { .. }) => Admission::Refuse {
            code: ErrorCode::NotAuthenticated,
            close: true,
        },
        (Phase::LoggedIn(_), ClientFrame::Ack { .. }) => Admission::Serve,
        (Phase::LoggedIn(_), ClientFrame::Request { request, .. }) => match request {
            Request::Login { .. } => Admission::Refuse {
                code: ErrorCode::AlreadyLoggedIn,
                close: false,
            },
            _ => Admission::Serve,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(request: Request) -> ClientFrame {
        ClientFrame::Request { id: 1, request }
    }

    #[test]
    fn admission_by_table() {
        let me = PhoneNumber::parse("+15550000001").expect("phone");
        let hello_in = |version| ClientFrame::Hello {
            version,
            agent: "t".into(),
        };
        let hello = hello_in(2);
        let v1_hello = hello_in(1);
        let old_hello = hello_in(0);
        let new_hello = hello_in(3);
        let ack = ClientFrame::Ack { ids: vec![7] };
        let send = req(Request::Send {
            to: me.clone(),
            client_msg_id: 1,
            payload: vec![],
        });
        let login = req(Request::Login { token: "x".into() });
        let ping = req(Request::Ping);
        let refuse = |code, close| Admission::Refuse { code, close };
        let logged_in = Phase::LoggedIn(me);
        let cases: Vec<(&Phase, &ClientFrame, Admission)> = vec![
            (
                &Phase::AwaitHello,
                &hello,
                Admission::Welcome { version: 2 },
            ),
            (
                &Phase::AwaitHello,
                &v1_hello,
                Admission::Welcome { version: 1 },
            ),
            (
                &Phase::AwaitHello,
                &old_hello,
                refuse(ErrorCode::UnsupportedVersion, true),
            ),
            (
                &Phase::AwaitHello,
                &new_hello,
                refuse(ErrorCode::UnsupportedVersion, true),
            ),
            (
                &Phase::AwaitHello,
                &ack,
                refuse(ErrorCode::NotAuthenticated, true),
            ),
            (
                &Phase::Guest,
                &ack,
                refuse(ErrorCode::NotAuthenticated, true),
            ),
            (&logged_in, &ack, Admission::Serve),
            (
                &Phase::AwaitHello,
                &ping,
                refuse(ErrorCode::NotAuthenticated, true),
            ),
            (&Phase::Guest, &ping, Admission::Serve),
            (&Phase::Guest, &login, Admission::Serve),
            (
                &Phase::Guest,
                &send,
                refuse(ErrorCode::NotAuthenticated, true),
            ),
            (
                &Phase::Guest,
                &hello,
                refuse(ErrorCode::InvalidRequest, true),
            ),
            (&logged_in, &send, Admission::Serve),
            (
                &logged_in,
                &login,
                refuse(ErrorCode::AlreadyLoggedIn, false),
            ),
            (&Phase::Closing, &send, Admission::Ignore),
        ];
        for (phase, frame, expected) in cases {
            assert_eq!(admit(phase, frame, 1..=2), expected, "{phase:?} {frame:?}");
        }
    }
}
