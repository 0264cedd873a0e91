//! Unit tests of the session state machine (being written).
