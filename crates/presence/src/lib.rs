//! Online state, last seen, typing relay and presence subscriptions: in memory, rate-limited, batched
