//! Mailbox fragments: durable store-and-forward of messages and receipts, one actor per fragment
