//! Which frame is allowed in which phase of a connection. Pure.

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
    /// A hello with our version: answer `Welcome`.
    Welcome,
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
            | Request::Login { .. }
            | Request::Ping
            | Request::MintTestUsers { .. }
    )
}

/// Decides what `frame` may do in `phase`.
pub fn admit(phase: &Phase, frame: &ClientFrame, our_version: u16) -> Admission {
    match (phase, frame) {
        (Phase::Closing, _) => Admission::Ignore,
        (Phase::AwaitHello, ClientFrame::Hello { version, .. }) if *version == our_version => {
            Admission::Welcome
        }
        (Phase::AwaitHello, ClientFrame::Hello { .. }) => Admission::Refuse {
            code: ErrorCode::UnsupportedVersion,
            close: true,
        },
        (Phase::AwaitHello, ClientFrame::Request { .. }) => Admission::Refuse {
            code: ErrorCode::NotAuthenticated,
            close: true,
        },
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
        let hello = ClientFrame::Hello {
            version: 1,
            agent: "t".into(),
        };
        let old_hello = ClientFrame::Hello {
            version: 0,
            agent: "t".into(),
        };
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
            (&Phase::AwaitHello, &hello, Admission::Welcome),
            (
                &Phase::AwaitHello,
                &old_hello,
                refuse(ErrorCode::UnsupportedVersion, true),
            ),
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
            assert_eq!(admit(phase, frame, 1), expected, "{phase:?} {frame:?}");
        }
    }
}
