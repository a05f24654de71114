//! Corrupt weight files give one clear error naming the file — never a panic or a huge
//! allocation. (Truncations of the real files are in real_models.rs.)

use std::path::Path;

use lora_tune::weights::Inventory;
use lora_tune::weights::host::HostTensors;

fn err_of(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let inv = Inventory::read(&path).err().map(|e| e.to_string());
    let host = HostTensors::read(&path).err().map(|e| e.to_string());
    let err = inv.unwrap_or_else(|| panic!("{name} accepted by Inventory"));
    assert!(host.is_some(), "{name} accepted by HostTensors");
    assert!(err.contains(name), "{err}");
    err
}

fn gguf_header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b
}

fn gguf_with_tensor(n_dims: u32, dims: &[u64], ty: u32) -> Vec<u8> {
    let mut b = gguf_header(1, 0);
    b.extend(1u64.to_le_bytes());
    b.push(b't');
    b.extend(n_dims.to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().next_multiple_of(32) + 64, 0);
    b
}

#[test]
fn gguf_absurd_dims_are_refused() {
    let err = err_of("dims.gguf", &gguf_with_tensor(9, &[1; 9], 0));
    assert!(err.contains("9 dimensions"), "{err}");
    let err = err_of("overflow.gguf", &gguf_with_tensor(2, &[u64::MAX, 4], 0));
    assert!(err.contains("overflow"), "{err}");
    let err = err_of("big.gguf", &gguf_with_tensor(2, &[1 << 20, 1 << 20], 0));
    assert!(err.contains("truncated or corrupt"), "{err}");
}

#[test]
fn gguf_unknown_quant_type_is_named() {
    let err = err_of("quant.gguf", &gguf_with_tensor(1, &[32], 99));
    assert!(err.contains("unknown ggml type 99"), "{err}");
}

#[test]
fn gguf_string_longer_than_the_file_is_refused() {
    let mut b = gguf_header(0, 1);
    b.extend((1u64 << 40).to_le_bytes()); // key length: a terabyte
    b.extend([0u8; 16]);
    let err = err_of("string.gguf", &b);
    assert!(err.contains("string length"), "{err}");
}

#[test]
fn safetensors_header_length_past_eof_is_refused() {
    let mut b = (1u64 << 40).to_le_bytes().to_vec();
    b.extend(b"{}");
    let err = err_of("header.safetensors", &b);
    assert!(err.contains("not a valid safetensors file"), "{err}");
}

#[test]
fn safetensors_short_tensor_data_is_refused() {
    let header = br#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header);
    b.extend([0u8; 16]); // 16 of the 64 bytes
    let err = err_of("short.safetensors", &b);
    assert!(err.contains("not a valid safetensors file"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let err = Inventory::read(Path::new("/no/such/model.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/no/such/model.gguf"), "{err}");
}
