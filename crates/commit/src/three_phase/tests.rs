//! Core unit tests for three-phase commit.
