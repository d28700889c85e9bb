//! The C ABI of `libhelm_c` (Helm v4's Go SDK), loaded with `libloading`.
//! Used only inside the render worker process: a crash, a hang or a memory
//! blow-up in Helm's engine stays in that process.
//!
//! Conventions of the ABI (from helm-python-sdk's declaration table): every
//! call returns an `int32` status (0 = ok, negative `helm_error_code`),
//! results and error details come back through `char**` out-parameters as
//! library-owned NUL-terminated UTF-8 strings, freed with
//! `helm_free_string`; charts are `uint64` handles freed with
//! `helm_chart_free`; inputs are borrowed `const char*` (NULL = absent).

use std::ffi::{CStr, CString, c_char};
use std::path::Path;

use libloading::{Library, Symbol};

use crate::{Error, Result};

type Handle = u64;
type FreeString = unsafe extern "C" fn(*mut c_char);
type LoadPath = unsafe extern "C" fn(*const c_char, *mut Handle, *mut *mut c_char) -> i32;
type LoadArchive = unsafe extern "C" fn(*const u8, u64, *mut Handle, *mut *mut c_char) -> i32;
type HandleString = unsafe extern "C" fn(Handle, *mut *mut c_char, *mut *mut c_char) -> i32;
type HandleFree = unsafe extern "C" fn(Handle, *mut *mut c_char) -> i32;
type Render =
    unsafe extern "C" fn(Handle, *const c_char, *const c_char, *mut *mut c_char, *mut *mut c_char) -> i32;
type Version = unsafe extern "C" fn() -> *mut c_char;

/// `helm_error_code` values the worker distinguishes.
pub mod code {
    /// A chart could not be read.
    pub const CHART_LOAD: i32 = -20;
    /// A chart failed validation.
    pub const CHART_INVALID: i32 = -21;
    /// Values were malformed or failed schema validation.
    pub const VALUES: i32 = -22;
    /// Template rendering failed.
    pub const RENDER: i32 = -23;
}

/// A failed call: the status code and Helm's message.
#[derive(Debug, Clone)]
pub struct CallError {
    /// The negative `helm_error_code`.
    pub code: i32,
    /// Helm's detail message.
    pub message: String,
}

/// The loaded library.
pub struct Engine {
    lib: Library,
}

/// A loaded chart; freed on drop.
pub struct Chart<'a> {
    engine: &'a Engine,
    handle: Handle,
}

impl Engine {
    /// Load the library at `path` and check that it exports what we call.
    pub fn load(path: &Path) -> Result<Self> {
        // SAFETY: loading a shared library runs its initializers; libhelm_c is
        // a Go c-shared library whose initializer starts the Go runtime only.
        let lib = unsafe { Library::new(path) }
            .map_err(|e| Error::HelmUnavailable(format!("cannot load {}: {e}", path.display())))?;
        let engine = Self { lib };
        for name in [
            "helm_free_string",
            "helm_chart_load",
            "helm_chart_load_archive",
            "helm_chart_free",
            "helm_chart_metadata",
            "helm_chart_values",
            "helm_chart_crds",
            "helm_chart_templates",
            "helm_render",
            "helm_sdk_version",
        ] {
            // SAFETY: only the symbol's presence is checked; it is not called.
            unsafe { engine.lib.get::<*const ()>(name.as_bytes()) }.map_err(|e| {
                Error::HelmUnavailable(format!("{} does not export {name}: {e}", path.display()))
            })?;
        }
        Ok(engine)
    }

    fn sym<T>(&self, name: &str) -> Symbol<'_, T> {
        // SAFETY: presence was checked in `load`; the types above mirror helm_c.h.
        unsafe { self.lib.get::<T>(name.as_bytes()) }.expect("symbol checked at load")
    }

    /// Copy a library-owned string and free it (NULL gives None).
    fn take(&self, p: *mut c_char) -> Option<String> {
        if p.is_null() {
            return None;
        }
        // SAFETY: the library returns NUL-terminated strings it owns until freed.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        let free: Symbol<'_, FreeString> = self.sym("helm_free_string");
        // SAFETY: freed exactly once, with the library's own allocator.
        unsafe { free(p) };
        Some(s)
    }

    fn status(&self, code: i32, err: *mut c_char) -> Result<(), CallError> {
        let message = self.take(err);
        if code == 0 {
            return Ok(());
        }
        Err(CallError {
            code,
            message: message.unwrap_or_else(|| format!("helm-c call failed with code {code}")),
        })
    }

    /// The Helm Go SDK version compiled into the library (e.g. `v4.2.3`).
    pub fn sdk_version(&self) -> String {
        let f: Symbol<'_, Version> = self.sym("helm_sdk_version");
        // SAFETY: no arguments; returns an owned string.
        self.take(unsafe { f() }).unwrap_or_default()
    }

    /// Load a chart directory or `.tgz` file.
    pub fn load_path(&self, path: &str) -> Result<Chart<'_>, CallError> {
        let c = cstring(path)?;
        let f: Symbol<'_, LoadPath> = self.sym("helm_chart_load");
        let (mut h, mut err) = (0u64, std::ptr::null_mut());
        // SAFETY: c outlives the call; out-parameters are valid pointers.
        let code = unsafe { f(c.as_ptr(), &mut h, &mut err) };
        self.status(code, err)?;
        Ok(Chart { engine: self, handle: h })
    }

    /// Load a chart from `.tgz` bytes (copied by the library).
    pub fn load_archive(&self, bytes: &[u8]) -> Result<Chart<'_>, CallError> {
        let f: Symbol<'_, LoadArchive> = self.sym("helm_chart_load_archive");
        let (mut h, mut err) = (0u64, std::ptr::null_mut());
        // SAFETY: bytes is borrowed for the duration of the call.
        let code = unsafe { f(bytes.as_ptr(), bytes.len() as u64, &mut h, &mut err) };
        self.status(code, err)?;
        Ok(Chart { engine: self, handle: h })
    }
}

impl Chart<'_> {
    fn string_call(&self, name: &str) -> Result<String, CallError> {
        let f: Symbol<'_, HandleString> = self.engine.sym(name);
        let (mut out, mut err) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: valid handle and out-parameters.
        let code = unsafe { f(self.handle, &mut out, &mut err) };
        let out = self.engine.take(out);
        self.engine.status(code, err)?;
        Ok(out.unwrap_or_default())
    }

    /// `Chart.yaml` as JSON.
    pub fn metadata(&self) -> Result<String, CallError> {
        self.string_call("helm_chart_metadata")
    }

    /// The chart's default values as JSON.
    pub fn values(&self) -> Result<String, CallError> {
        self.string_call("helm_chart_values")
    }

    /// The CRDs under `crds/` (chart and subcharts) as JSON `[{name, filename, data}]`.
    pub fn crds(&self) -> Result<String, CallError> {
        self.string_call("helm_chart_crds")
    }

    /// The raw templates as JSON `[{name, data}]`.
    pub fn templates(&self) -> Result<String, CallError> {
        self.string_call("helm_chart_templates")
    }

    /// Render with `values` (JSON) and render options (JSON); returns JSON
    /// `{template path: manifest}`. Schema validation happens here too.
    pub fn render(&self, values: &str, opts: &str) -> Result<String, CallError> {
        let (v, o) = (cstring(values)?, cstring(opts)?);
        let f: Symbol<'_, Render> = self.engine.sym("helm_render");
        let (mut out, mut err) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: valid handle; inputs outlive the call.
        let code = unsafe { f(self.handle, v.as_ptr(), o.as_ptr(), &mut out, &mut err) };
        let out = self.engine.take(out);
        self.engine.status(code, err)?;
        Ok(out.unwrap_or_default())
    }
}

impl Drop for Chart<'_> {
    fn drop(&mut self) {
        let f: Symbol<'_, HandleFree> = self.engine.sym("helm_chart_free");
        let mut err = std::ptr::null_mut();
        // SAFETY: the handle is freed once; frees are idempotent in the ABI anyway.
        unsafe { f(self.handle, &mut err) };
        self.engine.take(err);
    }
}

fn cstring(s: &str) -> Result<CString, CallError> {
    CString::new(s).map_err(|_| CallError { code: -2, message: "input contains a NUL byte".into() })
}
