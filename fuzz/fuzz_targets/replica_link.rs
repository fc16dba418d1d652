#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| concord_fuzzing::replica_link(data));
