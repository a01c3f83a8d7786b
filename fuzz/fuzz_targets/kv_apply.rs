#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tarn_fuzz_targets::kv_apply(data);
});
