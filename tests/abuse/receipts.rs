//! Mailbox jamming with forged or oversized receipts, and ack floods.
