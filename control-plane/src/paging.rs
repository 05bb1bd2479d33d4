//! Keyset pagination moved to `kapal::paging`, shared with billing. This module is empty until
//! `lib.rs` drops `mod paging;`.
