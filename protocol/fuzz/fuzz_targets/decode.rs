//! Feeds arbitrary bytes to the batch decoder and the module image parsers:
//! neither may panic, loop or allocate without bound on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    protocol::decode::fuzz_one(data);
});
