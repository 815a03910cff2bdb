// SPDX-License-Identifier: GPL-2.0-only
//! Moving intf.h's plain `#[repr(C)]` values (`bpf_intf.rs`) in and out of BPF map and ring
//! buffer bytes, and reading their fixed-size C strings. Every file of the loader that touches
//! a map's bytes goes through these three functions.

/// The bytes of a plain `#[repr(C)]` value from intf.h, for map updates.
pub fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a bindgen-generated plain-old-data struct without padding-sensitive
    // invariants; the slice lives as long as the borrow.
    unsafe { std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// Reads a plain `#[repr(C)]` value from map bytes.
pub fn from_bytes<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = bytes.len().min(std::mem::size_of::<T>());
    // SAFETY: copies at most size_of::<T>() bytes into a valid T of plain integers/arrays.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), &mut value as *mut T as *mut u8, n) };
    value
}

/// A NUL-terminated C string from a fixed-size `char` array of intf.h (lossy UTF-8).
pub fn c_string(bytes: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = bytes
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
