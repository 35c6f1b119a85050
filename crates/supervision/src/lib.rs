//! An OTP-style one-for-one supervisor for ractor actors, with restart intensity limits
