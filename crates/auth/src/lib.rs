//! Phone-number registration: verification codes through pluggable providers, then tokens
