//! A connection's phases (hello, guest, logged in, closing): which frame is
//! allowed in which phase, and what moves it to the next. Pure.

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

/// What a guest must do in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStage {
    /// Say hello.
    Hello,
    /// Log in.
    Login,
}

/// What moves a connection from one phase to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseEvent {
    /// The client's hello was answered with `Welcome`.
    Welcomed,
    /// A login's token checked out as this user's; the session attaches
    /// to the user's mailbox next.
    Authenticated(PhoneNumber),
    /// The mailbox would not take the session (a revoked token, a fragment
    /// away): the client may try again as a guest.
    AttachFailed,
    /// The session says goodbye or its reader ended.
    Closed,
}

impl Phase {
    /// The phase after `event`. An event that does not apply in this phase
    /// (a late answer after closing, say) leaves it as it is.
    pub fn next(&self, event: PhaseEvent) -> Phase {
        match (self, event) {
            (Phase::Closing, _) | (_, PhaseEvent::Closed) => Phase::Closing,
            (Phase::AwaitHello, PhaseEvent::Welcomed) => Phase::Guest,
            (Phase::Guest, PhaseEvent::Authenticated(user)) => Phase::LoggedIn(user),
            (Phase::LoggedIn(_), PhaseEvent::AttachFailed) => Phase::Guest,
            (phase, _) => phase.clone(),
        }
    }

    /// Whether the deadline of `stage` finds the connection still short of it.
    pub fn overdue(&self, stage: GuestStage) -> bool {
        match stage {
            GuestStage::Hello => *self == Phase::AwaitHello,
            GuestStage::Login => matches!(self, Phase::AwaitHello | Phase::Guest),
        }
    }

    /// The logged-in user, if any.
    pub fn user(&self) -> Option<&PhoneNumber> {
        match self {
            Phase::LoggedIn(user) => Some(user),
            _ => None,
        }
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

    #[test]
    fn phases_by_table() {
        let me = PhoneNumber::parse("+15550000001").expect("phone");
        let logged_in = Phase::LoggedIn(me.clone());
        let authenticated = PhaseEvent::Authenticated(me.clone());
        let cases: Vec<(&Phase, PhaseEvent, Phase)> = vec![
            (&Phase::AwaitHello, PhaseEvent::Welcomed, Phase::Guest),
            // A login is served only to a guest.
            (&Phase::AwaitHello, authenticated.clone(), Phase::AwaitHello),
            (&Phase::Guest, authenticated.clone(), logged_in.clone()),
            (&logged_in, authenticated.clone(), logged_in.clone()),
            (&logged_in, PhaseEvent::AttachFailed, Phase::Guest),
            (&Phase::Guest, PhaseEvent::AttachFailed, Phase::Guest),
            (&Phase::Guest, PhaseEvent::Welcomed, Phase::Guest),
            (&Phase::AwaitHello, PhaseEvent::Closed, Phase::Closing),
            (&logged_in, PhaseEvent::Closed, Phase::Closing),
            // Nothing leaves Closing.
            (&Phase::Closing, PhaseEvent::Welcomed, Phase::Closing),
            (&Phase::Closing, authenticated, Phase::Closing),
        ];
        for (phase, event, expected) in cases {
            assert_eq!(phase.next(event.clone()), expected, "{phase:?} {event:?}");
        }
    }

    #[test]
    fn guest_deadlines_by_table() {
        let me = PhoneNumber::parse("+15550000001").expect("phone");
        let cases = [
            (Phase::AwaitHello, GuestStage::Hello, true),
            (Phase::AwaitHello, GuestStage::Login, true),
            (Phase::Guest, GuestStage::Hello, false),
            (Phase::Guest, GuestStage::Login, true),
            (Phase::LoggedIn(me), GuestStage::Login, false),
            (Phase::Closing, GuestStage::Hello, false),
            (Phase::Closing, GuestStage::Login, false),
        ];
        for (phase, stage, expected) in cases {
            assert_eq!(phase.overdue(stage), expected, "{phase:?} {stage:?}");
        }
    }
}
