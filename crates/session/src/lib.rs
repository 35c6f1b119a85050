//! Client listeners (TLS over TCP) and one supervised actor per connection
