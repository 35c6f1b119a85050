//! The frames of the client protocol.
//!
//! A connection starts with [`ClientFrame::Hello`]; the node answers
//! [`ServerFrame::Welcome`]. Every later client frame is a
//! [`ClientFrame::Request`] with a request id chosen by the client; the node
//! answers each with exactly one [`ServerFrame::Response`] or
//! [`ServerFrame::Error`] carrying the same id. Pushed frames (deliveries,
//! receipts, presence, typing) carry no request id.
//!
//! New variants are only ever appended, so an older peer fails to decode a
//! newer variant instead of misreading it (postcard encodes the variant index).

use serde::{Deserialize, Serialize};

use crate::PhoneNumber;

/// A client-chosen id that pairs a request with its answer.
pub type RequestId = u32;

/// A server-assigned message id, unique in the cluster. The top 16 bits are the
/// mailbox fragment that assigned it, the low 48 bits that fragment's sequence.
pub type MessageId = u64;

/// Milliseconds since the Unix epoch, as stamped by the node.
pub type TimestampMs = u64;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame of every connection.
    Hello {
        /// The client's [`crate::PROTOCOL_VERSION`].
        version: u16,
        /// Free text naming the client software, for logs.
        agent: String,
    },
    /// Any request after the hello.
    Request {
        /// Echoed in the answer.
        id: RequestId,
        /// What is asked.
        request: Request,
    },
    /// Acknowledge received mailbox entries ([`ServerFrame::Deliver`] and
    /// [`ServerFrame::Receipt`] ids), after login (protocol version 2). Like
    /// [`Request::Ack`] but never answered: an answer would say only that
    /// the frame arrived, and an ack that is lost costs nothing but a
    /// redelivery at the next login, which the client acks again. Saves a
    /// frame each way for every acknowledged batch.
    Ack {
        /// Ids of the acknowledged entries.
        ids: Vec<MessageId>,
    },
}

/// What a client asks of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Send a verification code to `phone` (auth; allowed before login).
    /// Answer: [`Response::CodeSent`].
    RequestCode {
        /// The number to verify.
        phone: PhoneNumber,
    },
    /// Trade a verification code for a token (auth; allowed before login).
    /// Answer: [`Response::Verified`].
    Verify {
        /// The number the code was sent to.
        phone: PhoneNumber,
        /// The six digits received.
        code: String,
    },
    /// Start an authenticated session. Answer: [`Response::LoggedIn`], then the
    /// node pushes everything waiting in the user's mailbox, oldest first.
    Login {
        /// A token from [`Response::Verified`].
        token: String,
    },
    /// Send a message. Answer: [`Response::ServerAck`] once it is durable
    /// (one tick). Resending the same `client_msg_id` is answered again and
    /// never stored twice.
    Send {
        /// The recipient.
        to: PhoneNumber,
        /// Chosen by the sender, unique per sender; the dedupe key.
        client_msg_id: u64,
        /// Opaque bytes (clients may encrypt end to end).
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Acknowledge received mailbox entries ([`ServerFrame::Deliver`] and
    /// [`ServerFrame::Receipt`] ids): the node drops them, and for messages
    /// sends the sender a `Delivered` receipt (two ticks). Answer: [`Response::Ok`].
    /// Version 1 clients use this; later ones send [`ClientFrame::Ack`],
    /// which saves the answer.
    Ack {
        /// Ids of the acknowledged entries.
        ids: Vec<MessageId>,
    },
    /// Tell `sender` that its messages `ids` were read (blue ticks).
    /// Answer: [`Response::Ok`] once the receipt is stored for the sender.
    Read {
        /// Who sent the messages.
        sender: PhoneNumber,
        /// The message ids that were read.
        ids: Vec<MessageId>,
    },
    /// Relay a typing indicator to `to` if online and allowed to see the
    /// sender's presence ([`Visibility`]); never stored, rate-limited.
    /// Answer: [`Response::Ok`] (also when it was dropped).
    Typing {
        /// Who is being typed to.
        to: PhoneNumber,
        /// Started (`true`) or stopped typing.
        active: bool,
    },
    /// Ask for presence updates (online, last seen) of these users. The node
    /// pushes the current state of each at once and then every change, but
    /// only of users whose [`Visibility`] lets the subscriber see them (the
    /// others are silently left out, so the answer tells nothing about
    /// them). At most the node's `presence.max_watched` users (1,000 by
    /// default; a longer list is refused with [`ErrorCode::InvalidRequest`]),
    /// and rate-limited per connection (together with
    /// [`Request::SetContacts`] and [`Request::SetPresencePrivacy`]: over
    /// the rate, [`ErrorCode::RateLimited`]). Answer: [`Response::Ok`].
    SubscribePresence {
        /// Users to watch; replaces the previous list.
        users: Vec<PhoneNumber>,
    },
    /// Heartbeat. Answer: [`Response::Pong`].
    Ping,
    /// A request for an extension actor registered under `namespace`.
    /// Answer: [`Response::Extension`] or an error.
    Extension {
        /// The extension's namespace, as registered with the node.
        namespace: String,
        /// Extension-defined bytes.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// End the session; the node answers [`Response::Ok`] and closes.
    Logout,
    /// Mint tokens for `count` test users numbered from `first` (load tests).
    /// Allowed before login; refused unless the node's config enables it and
    /// `secret` matches. Answer: [`Response::TestUsers`].
    MintTestUsers {
        /// The node's configured admin secret.
        secret: String,
        /// The first phone number; the others follow it numerically.
        first: PhoneNumber,
        /// How many (at most [`MAX_MINT_PER_REQUEST`]).
        count: u32,
    },
    /// Send a message that must be stored after the sender's earlier,
    /// still unacknowledged message `after` to the same recipient: it is
    /// refused with [`ErrorCode::EarlierMessageMissing`] unless that one is
    /// stored (or being stored) first. A client that pipelines several
    /// messages to one recipient thus keeps their order even when an
    /// earlier one is refused for a while (a failover, a busy node) and
    /// resent. Otherwise as [`Request::Send`].
    SendAfter {
        /// The recipient.
        to: PhoneNumber,
        /// Chosen by the sender, unique per sender; the dedupe key.
        client_msg_id: u64,
        /// The `client_msg_id` of the sender's previous message to `to`.
        after: u64,
        /// Opaque bytes (clients may encrypt end to end).
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Set (`Some`) or clear (`None`) the account's registration-lock PIN
    /// (after login). While set, a new [`Request::Verify`] of the number
    /// also needs the PIN ([`Request::VerifyWithPin`]); the lock lapses
    /// once the account has not logged in for 7 days (the node's
    /// `auth.registration_lock_lapse_days`). 4 to 64 characters.
    /// Answer: [`Response::Ok`].
    SetRegistrationLock {
        /// The PIN, or `None` to remove the lock.
        pin: Option<String>,
    },
    /// [`Request::Verify`] for a number with a registration lock: the code
    /// and the account's PIN (auth; allowed before login). A wrong PIN is
    /// answered [`ErrorCode::RegistrationLocked`] and counted (a few per
    /// day). Answer: [`Response::Verified`].
    VerifyWithPin {
        /// The number the code was sent to.
        phone: PhoneNumber,
        /// The six digits received.
        code: String,
        /// The registration-lock PIN.
        pin: String,
    },
    /// Replace the account's contact list (after login): with
    /// [`Visibility::Contacts`], the users who may see this user's presence
    /// and typing. At most the node's `presence.max_contacts` (2,000 by
    /// default; a longer list is refused with [`ErrorCode::InvalidRequest`]).
    /// Stored by the node the client is connected to. Rate-limited with
    /// [`Request::SubscribePresence`]. Answer: [`Response::Ok`] once stored.
    SetContacts {
        /// The contacts; replaces the previous list.
        contacts: Vec<PhoneNumber>,
    },
    /// Set who may see this user's presence (online, last seen) and typing
    /// (after login). Until set, [`Visibility::Contacts`]. Rate-limited with
    /// [`Request::SubscribePresence`]. Answer: [`Response::Ok`] once stored.
    SetPresencePrivacy {
        /// Who may see it.
        visibility: Visibility,
    },
    /// Create a group with this user as its admin and `members` (not
    /// including the creator) as members; at most the node's
    /// `groups.max_members` with the creator. Every member, the creator
    /// too, receives [`GroupChange::Created`] as its first group event.
    /// Answer: [`Response::GroupCreated`] once the group is durable.
    CreateGroup {
        /// Shown to members: 1 to 100 bytes, no control characters.
        name: String,
        /// The other members.
        members: Vec<PhoneNumber>,
    },
    /// Change a group (admins only, except [`GroupCommand::Leave`]). Every
    /// member at the change, the removed ones too, receives it as a
    /// [`ServerFrame::GroupEvent`] in order with the group's messages.
    /// Answer: [`Response::Ok`] once the change is durable.
    ChangeGroup {
        /// The group.
        group: GroupId,
        /// What to change.
        command: GroupCommand,
    },
    /// The group's name and members (members only). Answer:
    /// [`Response::GroupInfo`].
    GroupInfo {
        /// The group.
        group: GroupId,
    },
    /// Send a message to a group (members only): stored once, then fanned
    /// out by the server to every other member, who receives it as a
    /// [`ServerFrame::GroupDeliver`]. `client_msg_id` and `after` work as
    /// in [`Request::SendAfter`], per sender and group. Answer:
    /// [`Response::ServerAck`] once stored (one tick).
    SendGroup {
        /// The group.
        group: GroupId,
        /// Chosen by the sender, unique per sender; the dedupe key.
        client_msg_id: u64,
        /// The `client_msg_id` of the sender's previous, still
        /// unacknowledged message to this group, if any.
        after: Option<u64>,
        /// Opaque bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The groups this user is in, as far as the changes that added and
    /// removed the user have reached its mailbox. Answer:
    /// [`Response::Groups`].
    ListGroups,
    /// This member has read the group up to `through` (a position it was
    /// delivered): counts toward the read ticks of everything before.
    /// Answer: [`Response::Ok`] once stored.
    ReadGroup {
        /// The group.
        group: GroupId,
        /// The last position read.
        through: Position,
    },
    /// Who has received and read the sender's own message at `position`
    /// (its `msg_id` in the [`Response::ServerAck`]). Answer:
    /// [`Response::GroupMessageInfo`].
    GroupMessageInfo {
        /// The group.
        group: GroupId,
        /// The message's position.
        position: Position,
    },
    /// [`Request::CreateGroup`] that may be repeated: a repeat with the same
    /// `create_id` from the same user (after an answer lost with the
    /// connection) is answered with the group the first one created, for
    /// as long as send dedupe keys are kept. Answer:
    /// [`Response::GroupCreated`].
    CreateGroupOnce {
        /// Chosen by the client, unique among its creations.
        create_id: u64,
        /// As in [`Request::CreateGroup`].
        name: String,
        /// As in [`Request::CreateGroup`].
        members: Vec<PhoneNumber>,
    },
}

/// Who may see a user's presence and typing (besides the user).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Visibility {
    /// Every user who asks.
    Everyone,
    /// Only the users in the contact list the user uploaded
    /// ([`Request::SetContacts`]); the default.
    #[default]
    Contacts,
    /// No one.
    Nobody,
}

/// Most test users minted by one [`Request::MintTestUsers`], so that the
/// answer fits in a default-sized frame even with signed tokens (up to 148
/// characters each; see the test in `codec.rs`).
pub const MAX_MINT_PER_REQUEST: u32 = 250;

/// Most message ids in one [`ClientFrame::Ack`], [`Request::Ack`] or
/// [`Request::Read`]. A device holds at most its delivery window of unacked
/// entries (256 by default), so a client never needs more; a larger list is
/// refused with [`ErrorCode::InvalidRequest`] (an `Ack` frame also closes
/// the connection).
pub const MAX_IDS_PER_ACK: usize = 1024;

/// A frame sent by the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Answer to [`ClientFrame::Hello`].
    Welcome {
        /// The node's [`crate::PROTOCOL_VERSION`].
        version: u16,
        /// The node's name, for logs.
        node: String,
        /// Largest frame the node accepts, length prefix excluded.
        max_frame_bytes: u32,
        /// The node closes a connection silent for this long; clients ping
        /// at a third of it.
        idle_timeout_secs: u32,
    },
    /// The answer to request `id`.
    Response {
        /// The request's id.
        id: RequestId,
        /// The answer.
        response: Response,
    },
    /// Request `id` failed, or (with `id: None`) the connection did.
    Error {
        /// The failed request, if the frame could be read that far.
        id: Option<RequestId>,
        /// Machine-readable kind.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// A message from the mailbox. Acknowledge with [`ClientFrame::Ack`].
    Deliver {
        /// Server message id: the ack key and the client's dedupe key.
        msg_id: MessageId,
        /// The sender.
        from: PhoneNumber,
        /// The sender's id for it.
        client_msg_id: u64,
        /// When the node stored it.
        server_ts: TimestampMs,
        /// The sender's bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A receipt for messages this user sent. Acknowledge `id` with
    /// [`ClientFrame::Ack`].
    Receipt {
        /// Mailbox entry id of this receipt.
        id: MessageId,
        /// Delivered (two ticks) or read (blue).
        kind: ReceiptKind,
        /// The recipient who received or read the messages.
        by: PhoneNumber,
        /// The messages concerned.
        msg_ids: Vec<MessageId>,
        /// When the recipient acked or read.
        ts: TimestampMs,
    },
    /// A watched user's presence changed (or its current state on subscribe).
    Presence {
        /// Whose presence.
        user: PhoneNumber,
        /// Online, or offline since when.
        status: PresenceStatus,
    },
    /// `from` started or stopped typing to this user.
    Typing {
        /// Who types.
        from: PhoneNumber,
        /// Started or stopped.
        active: bool,
    },
    /// A push from an extension.
    Extension {
        /// The extension's namespace.
        namespace: String,
        /// Extension-defined bytes.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// The node is about to close this connection.
    Closing {
        /// Why.
        reason: CloseReason,
        /// When to reconnect (and where, in a cluster: any node in the list).
        retry_after_ms: u32,
    },
    /// A message to a group this user is in. Acknowledge `msg_id` with
    /// [`ClientFrame::Ack`].
    GroupDeliver {
        /// This copy's id in the user's mailbox: the ack key.
        msg_id: MessageId,
        /// The group.
        group: GroupId,
        /// Its place in the group's log: every member sees the same, and
        /// group messages and events arrive in its order.
        position: Position,
        /// The sender.
        from: PhoneNumber,
        /// The sender's id for it.
        client_msg_id: u64,
        /// When the group's node stored it.
        server_ts: TimestampMs,
        /// The sender's bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A change of a group this user is (or was, for its removal) in.
    /// Acknowledge `msg_id` with [`ClientFrame::Ack`].
    GroupEvent {
        /// This copy's id in the user's mailbox: the ack key.
        msg_id: MessageId,
        /// The group.
        group: GroupId,
        /// Its place in the group's log.
        position: Position,
        /// Who made the change.
        by: PhoneNumber,
        /// What changed.
        change: GroupChange,
        /// When.
        ts: TimestampMs,
    },
    /// Every member (but the sender, and those who left) has received
    /// (`Delivered`) or read (`Read`, which implies delivered) this user's
    /// group messages at `positions`. Acknowledge `msg_id` with
    /// [`ClientFrame::Ack`].
    GroupReceipt {
        /// This copy's id in the user's mailbox: the ack key.
        msg_id: MessageId,
        /// The group.
        group: GroupId,
        /// The messages: their `msg_id`s in the [`Response::ServerAck`]s.
        positions: Vec<Position>,
        /// Delivered or read.
        kind: ReceiptKind,
        /// When the group's node found it.
        ts: TimestampMs,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A code was generated and handed to the provider.
    CodeSent {
        /// How long the code stays valid.
        expires_in_secs: u32,
    },
    /// The code matched; keep the token secret.
    Verified {
        /// Bearer token for [`Request::Login`].
        token: String,
        /// When the token stops working.
        expires_at_ms: TimestampMs,
    },
    /// The session is authenticated as `user`.
    LoggedIn {
        /// The authenticated identity.
        user: PhoneNumber,
    },
    /// One tick: the message is durable and will be delivered.
    ServerAck {
        /// The sender's id, echoed.
        client_msg_id: u64,
        /// The server's id for the message.
        msg_id: MessageId,
        /// When it was stored.
        server_ts: TimestampMs,
    },
    /// Done.
    Ok,
    /// Answer to [`Request::Ping`].
    Pong,
    /// An extension's answer.
    Extension {
        /// Extension-defined bytes.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Tokens of minted test users, in order from the requested first number.
    TestUsers {
        /// One token per user.
        tokens: Vec<String>,
    },
    /// A group was created.
    GroupCreated {
        /// Its id.
        group: GroupId,
    },
    /// A group's name and members.
    GroupInfo {
        /// The group.
        group: GroupId,
        /// Its name.
        name: String,
        /// Its members and their roles, by number.
        members: Vec<(PhoneNumber, GroupRole)>,
    },
    /// The groups this user is in, by id.
    Groups {
        /// Their ids.
        groups: Vec<GroupId>,
    },
    /// Each member's state for a group message: `None` sent, else
    /// delivered or read. Empty once every member has read it (the node
    /// keeps no state then), or after it expired.
    GroupMessageInfo {
        /// The group.
        group: GroupId,
        /// The message's position.
        position: Position,
        /// The members who count for its ticks (not its sender, none added
        /// after it), by number.
        members: Vec<(PhoneNumber, Option<ReceiptKind>)>,
    },
}

/// The kind of a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// The recipient's device has the message (two ticks).
    Delivered,
    /// The recipient read it (blue ticks).
    Read,
}

/// A user's presence as seen by others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceStatus {
    /// Connected now.
    Online,
    /// Not connected; last seen at this time (`None`: not since the node started).
    Offline {
        /// Last time the user was connected.
        last_seen_ms: Option<TimestampMs>,
    },
}

/// Why a request or connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The hello named a protocol version this node does not speak.
    UnsupportedVersion,
    /// The bytes were not a frame; the connection is closed.
    BadFrame,
    /// The length prefix exceeds the limit; the connection is closed.
    FrameTooLarge,
    /// A frame other than hello came first, or a request needs a login.
    NotAuthenticated,
    /// A request this node does not know (a newer client?).
    UnknownRequest,
    /// Too many requests of this kind; retry later.
    RateLimited {
        /// When a retry can succeed.
        retry_after_ms: u32,
    },
    /// The code was wrong.
    InvalidCode,
    /// No valid code is pending (expired, never requested, or used up).
    CodeExpired,
    /// Too many wrong codes; request a new one.
    TooManyAttempts,
    /// The token is unknown or expired.
    InvalidToken,
    /// The verification code could not be handed to its provider.
    ProviderFailed,
    /// A message payload exceeds the limit.
    PayloadTooLarge,
    /// No extension is registered under the namespace.
    UnknownNamespace,
    /// The node cannot take the request now (overloaded or draining).
    Unavailable {
        /// When a retry can succeed.
        retry_after_ms: u32,
    },
    /// Login is already done on this connection.
    AlreadyLoggedIn,
    /// The request was malformed (e.g. an empty id list).
    InvalidRequest,
    /// A node-side failure; the request may be retried.
    Internal,
    /// A [`Request::SendAfter`] whose earlier message is not stored: resend
    /// that one first, then this one.
    EarlierMessageMissing,
    /// The code was right but the number has a registration lock: verify
    /// again with [`Request::VerifyWithPin`] (the code stays valid). Also
    /// the answer to a wrong PIN.
    RegistrationLocked {
        /// Wrong PINs still allowed today (0: none until a day has passed).
        attempts_left: u32,
    },
    /// No such group (never created, or everyone left it).
    UnknownGroup,
    /// Only members may do this.
    NotGroupMember,
    /// Only the group's admins may do this.
    NotGroupAdmin,
    /// The group would exceed its member limit.
    GroupFull {
        /// The limit.
        limit: u32,
    },
}

/// A group's id, given by the node that created it.
pub type GroupId = u64;

/// A place in a group's log, given by the group's node: positions only
/// grow, and every member sees a group's messages and events in their
/// order.
pub type Position = u64;

/// What a member of a group may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRole {
    /// Changes membership, roles and the name; sends.
    Admin,
    /// Sends and leaves.
    Member,
}

/// A change of a group: what its log records, and what members see as an
/// event, in order with the messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupChange {
    /// The group was created with these members (the creator first).
    Created {
        /// Its name.
        name: String,
        /// Everyone in it, the creator first.
        members: Vec<PhoneNumber>,
    },
    /// Admin `by` added these members.
    Added {
        /// The new members.
        members: Vec<PhoneNumber>,
    },
    /// Admin `by` removed these members.
    Removed {
        /// The removed members.
        members: Vec<PhoneNumber>,
    },
    /// `member` became an admin.
    Promoted {
        /// Who.
        member: PhoneNumber,
    },
    /// `member` is no longer an admin.
    Demoted {
        /// Who.
        member: PhoneNumber,
    },
    /// The group has a new name.
    Renamed {
        /// The new name.
        name: String,
    },
    /// The member who made the change left; `new_admin` was promoted
    /// because the last admin left.
    Left {
        /// Promoted in the leaver's place, if the group had no admin left.
        new_admin: Option<PhoneNumber>,
    },
}

/// What a member asks of a group (a [`GroupChange`] before it is checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupCommand {
    /// Add members (admins only).
    Add(Vec<PhoneNumber>),
    /// Remove members (admins only; not oneself: leave instead).
    Remove(Vec<PhoneNumber>),
    /// Make a member an admin (admins only).
    Promote(PhoneNumber),
    /// Make an admin a member (admins only; not the last admin).
    Demote(PhoneNumber),
    /// Rename (admins only).
    Rename(String),
    /// Leave the group.
    Leave,
}

/// Why the node closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// The node is shutting down or draining.
    ShuttingDown,
    /// The same user logged in on another connection.
    Replaced,
    /// The client did not read fast enough; it resumes from its mailbox.
    SlowConsumer,
    /// Nothing heard from the client within the idle timeout.
    IdleTimeout,
    /// The client broke the protocol (see the preceding error).
    ProtocolViolation,
    /// The client logged out.
    LoggedOut,
    /// The session's token was revoked (a logout, or a new verification of
    /// the number): log in again with a new token.
    TokenRevoked,
}
