//! Core unit tests for Paxos Commit.
