//! Rust client library: connect over TLS, register, log in, send, receive, with reconnect
