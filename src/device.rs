//! `--device auto|cpu|wgpu|vulkan|metal|cuda[:N]` → a burn [`Device`], with the reason it was
//! picked. Parsing is pure; [`select`] is where backends are probed. Knows nothing of models.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::dtype::{ComputeDtype, Dtype};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A real GPU through wgpu when one exists, otherwise the flex CPU backend.
    Auto,
    /// burn's pure-Rust flex backend.
    Cpu,
    /// wgpu on whichever graphics API the machine offers (Vulkan, Metal, DX12, GL).
    Wgpu,
    /// wgpu pinned to Vulkan.
    Vulkan,
    /// wgpu pinned to Metal.
    Metal,
    /// CUDA device by index; `cuda` without one: the local rank's GPU in a data-parallel job
    /// (one rank per GPU), else GPU 0.
    Cuda(Option<usize>),
}

pub const DEVICE_HELP: &str = "auto, cpu, wgpu, vulkan, metal, cuda or cuda:N";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`; expected one of: {DEVICE_HELP}")]
    Unknown(String),
    #[error("`{0}`: the CUDA index must be a whole number, as in cuda:0")]
    BadIndex(String),
    #[error(
        "this build has no `{backend}` backend; rebuild with `cargo build --release --features {feature}`"
    )]
    NotBuilt {
        backend: &'static str,
        feature: &'static str,
    },
    #[error("could not start the wgpu device: {0}. Try `--device cpu`")]
    WgpuInit(String),
    #[error(
        "model.compute_dtype = \"{dtype}\": {device} has no general {dtype} arithmetic ({why}); use \"f32\" or \"auto\""
    )]
    NoHalfArithmetic {
        device: String,
        dtype: &'static str,
        why: &'static str,
    },
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "auto" => Self::Auto,
            "cpu" | "flex" => Self::Cpu,
            "wgpu" | "gpu" => Self::Wgpu,
            "vulkan" => Self::Vulkan,
            "metal" => Self::Metal,
            "cuda" => Self::Cuda(None),
            _ => match lower.strip_prefix("cuda:") {
                Some(n) => Self::Cuda(Some(
                    n.parse().map_err(|_| DeviceError::BadIndex(s.into()))?,
                )),
                None => return Err(DeviceError::Unknown(s.into())),
            },
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Wgpu => f.write_str("wgpu"),
            Self::Vulkan => f.write_str("vulkan"),
            Self::Metal => f.write_str("metal"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

/// A started device, its short name and why it was chosen (printed at the start of a run).
#[derive(Debug, Clone)]
pub struct Selected {
    pub device: Device,
    pub name: String,
    /// Computes in host memory (flex), where `plan`'s memory estimate applies.
    pub on_cpu: bool,
    pub why: String,
    /// Where cubecl keeps this adapter's autotune results (`cache::use_autotune_dir`); None on
    /// the CPU or where the user's own cubecl.toml decides.
    pub autotune: Option<std::path::PathBuf>,
}

/// `model.compute_dtype` on `selected`: the dtype the frozen base's products run in, and why.
/// `auto` takes bf16 where the backend reports general bf16 arithmetic (burn's
/// `supports_dtype`: CUDA, Metal), else f16 where the adapter has f16 tensor cores (Vulkan, whose
/// bf16 is conversion-only), else f32 — always f32 on the CPU, where flex converts every
/// half-precision product to f32 and back. Asked for explicitly, bf16 runs
/// on the CPU too (slower; for tests) and is refused where the device has no bf16 arithmetic.
pub fn compute_dtype(
    selected: &Selected,
    choice: ComputeDtype,
) -> Result<(Dtype, String), DeviceError> {
    let has = |dtype: Dtype| selected.on_cpu || selected.device.supports_dtype(dtype.float());
    let dtype = match choice {
        ComputeDtype::F32 => return Ok((Dtype::F32, "asked for".into())),
        ComputeDtype::Auto if selected.on_cpu => {
            let why = "the CPU backend converts half-precision products to f32 and back";
            return Ok((Dtype::F32, why.into()));
        }
        ComputeDtype::Auto if !has(Dtype::Bf16) => {
            // Vulkan's case: bf16 is conversion-only and f32 products have no tensor cores (no
            // tf32 in SPIR-V), so f16 with loss scaling is the only way onto them.
            let name = &selected.name;
            return Ok(
                match (has(Dtype::F16), f16_tensor_cores(&selected.device)) {
                    (true, true) => (
                        Dtype::F16,
                        format!(
                            "{name} has f16 tensor cores (cooperative matrices) and no general bf16 arithmetic; f16 products with dynamic loss scaling"
                        ),
                    ),
                    (true, false) => (
                        Dtype::F32,
                        format!(
                            r#"{name} has no general bf16 arithmetic and no f16 tensor cores; model.compute_dtype = "f16" runs its f16 arithmetic on request"#
                        ),
                    ),
                    (false, _) => (Dtype::F32, format!("{name} has no general bf16 arithmetic")),
                },
            );
        }
        ComputeDtype::Auto => {
            return Ok((
                Dtype::Bf16,
                format!("{} has bf16 arithmetic", selected.name),
            ));
        }
        ComputeDtype::Bf16 => Dtype::Bf16,
        ComputeDtype::F16 => Dtype::F16,
    };
    if !has(dtype) {
        return Err(DeviceError::NoHalfArithmetic {
            device: selected.name.clone(),
            dtype: dtype.name(),
            why: match dtype {
                Dtype::F16 => {
                    "its adapter lacks f16 shaders: wgpu's SHADER_F16, Vulkan's shaderFloat16"
                }
                _ => "its backend reports storage or conversion only",
            },
        });
    }
    let why = if selected.on_cpu {
        "asked for; slower than f32 on the CPU, where every product is converted"
    } else {
        "asked for"
    };
    Ok((dtype, why.into()))
}

/// Whether a cubecl device multiplies f16 matrices on tensor cores (cooperative matrices with
/// f16 operands), as Vulkan's `VK_KHR_cooperative_matrix` reports on NVIDIA, AMD and Intel GPUs.
#[cfg(feature = "cube")]
pub fn f16_tensor_cores(device: &Device) -> bool {
    use burn_cubecl::cubecl::ir::{ElemType, FloatKind};
    let burn::backend::DispatchDevice::Cube(cube) = device.as_dispatch() else {
        return false;
    };
    let f16 = ElemType::Float(FloatKind::F16);
    let client = cube.client();
    let cmma = &client.properties().features.matmul.cmma;
    cmma.iter().any(|c| c.a_type == f16 && c.b_type == f16)
}

#[cfg(not(feature = "cube"))]
pub fn f16_tensor_cores(_device: &Device) -> bool {
    false
}

/// Starts the device the user asked for; `Auto` probes wgpu adapters first.
pub fn select(choice: DeviceChoice) -> Result<Selected, DeviceError> {
    match choice {
        DeviceChoice::Auto => auto(),
        DeviceChoice::Cpu => flex("asked for with --device cpu".into()),
        DeviceChoice::Wgpu => wgpu_default(),
        DeviceChoice::Vulkan => pinned_vulkan(),
        DeviceChoice::Metal => pinned_metal(),
        DeviceChoice::Cuda(n) => cuda(n.unwrap_or(crate::distributed::ranks().local_rank)),
    }
}

fn auto() -> Result<Selected, DeviceError> {
    match gpu_adapter() {
        Some(gpu) => {
            let mut selected = wgpu_default()?;
            selected.why = format!("auto: wgpu found the GPU {gpu}");
            Ok(selected)
        }
        None => flex(format!(
            "auto: {}; using the flex CPU backend",
            no_gpu_reason()
        )),
    }
}

#[cfg(feature = "flex")]
fn flex(why: String) -> Result<Selected, DeviceError> {
    Ok(Selected {
        device: Device::flex(),
        name: "cpu (flex)".into(),
        on_cpu: true,
        why,
        autotune: None,
    })
}

#[cfg(not(feature = "flex"))]
fn flex(_why: String) -> Result<Selected, DeviceError> {
    Err(DeviceError::NotBuilt {
        backend: "flex (CPU)",
        feature: "flex",
    })
}

/// The first real (non-software) GPU adapter wgpu can see, described for the user.
#[cfg(feature = "wgpu")]
fn gpu_adapter() -> Option<String> {
    use burn::tensor::wgpu::wgpu;
    software_or_gpu_adapters()
        .into_iter()
        .find(|a| {
            matches!(
                a.device_type,
                wgpu::DeviceType::DiscreteGpu
                    | wgpu::DeviceType::IntegratedGpu
                    | wgpu::DeviceType::VirtualGpu
            )
        })
        .map(|a| format!("`{}` ({:?}, {:?})", a.name, a.device_type, a.backend))
}

#[cfg(not(feature = "wgpu"))]
fn gpu_adapter() -> Option<String> {
    None
}

#[cfg(feature = "wgpu")]
fn software_or_gpu_adapters() -> Vec<burn::tensor::wgpu::wgpu::AdapterInfo> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapters = pollster_block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().map(|a| a.get_info()).collect()
}

#[cfg(feature = "wgpu")]
fn no_gpu_reason() -> String {
    let adapters = software_or_gpu_adapters();
    if adapters.is_empty() {
        "wgpu found no graphics adapter".into()
    } else {
        let names: Vec<String> = adapters
            .iter()
            .map(|a| format!("`{}` ({:?})", a.name, a.backend))
            .collect();
        format!("wgpu found only software adapters ({})", names.join(", "))
    }
}

#[cfg(not(feature = "wgpu"))]
fn no_gpu_reason() -> String {
    "this build has no wgpu backend".into()
}

/// Drives a future that completes without a runtime (wgpu's adapter enumeration is such a one).
#[cfg(feature = "wgpu")]
fn pollster_block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// Starts wgpu once per process (burn's runtime cannot be initialised twice) on the graphics API
/// [`wgpu_api`] picks, and names the adapter it came up on.
#[cfg(feature = "wgpu")]
fn wgpu_default() -> Result<Selected, DeviceError> {
    use std::sync::OnceLock;
    type Started = (Device, String, Option<std::path::PathBuf>);
    static STARTED: OnceLock<Result<Started, String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        let adapters = software_or_gpu_adapters();
        let local = crate::distributed::ranks();
        let options: Result<_, String> =
            match rank_gpu(&adapters, local.local_rank, local.local_size) {
                // One rank per GPU: this rank's discrete GPU on its graphics API.
                Some((api, index, adapter, key)) => Ok((
                    Device::wgpu_options()
                        .graphics_api(api)
                        .device_kind(burn::tensor::DeviceKind::DiscreteGpu(index)),
                    adapter,
                    key,
                )),
                None => {
                    let (api, adapter, key) = wgpu_api(&adapters)?;
                    Ok((Device::wgpu_options().graphics_api(api), adapter, key))
                }
            };
        let (options, adapter, key) = options?;
        let autotune = crate::cache::use_autotune_dir(&key);
        let device = options.init().map_err(|e| e.to_string())?;
        Ok((device, adapter, autotune))
    });
    match started {
        Ok((device, adapter, autotune)) => Ok(Selected {
            device: device.clone(),
            name: format!("wgpu ({adapter})"),
            on_cpu: false,
            why: "asked for with --device wgpu".into(),
            autotune: autotune.clone(),
        }),
        Err(e) => Err(DeviceError::WgpuInit(e.clone())),
    }
}

/// In a job with several ranks on this machine, the discrete GPU of local rank `local_rank`
/// (GPU `local_rank % count` among the discrete adapters of the first one's API): the API, the
/// index burn's `DiscreteGpu` takes, the adapter's description and its [`adapter_key`]. None for
/// one rank per machine or without a discrete GPU (wgpu's own choice then).
#[cfg(feature = "wgpu")]
fn rank_gpu(
    adapters: &[burn::tensor::wgpu::wgpu::AdapterInfo],
    local_rank: usize,
    local_size: usize,
) -> Option<(burn::tensor::wgpu::WgpuBackend, usize, String, String)> {
    use burn::tensor::wgpu::WgpuBackend;
    use burn::tensor::wgpu::wgpu::{Backend, DeviceType};
    if local_size < 2 {
        return None;
    }
    let discrete =
        |a: &&burn::tensor::wgpu::wgpu::AdapterInfo| a.device_type == DeviceType::DiscreteGpu;
    let backend = adapters.iter().find(discrete)?.backend;
    let api = match backend {
        Backend::Vulkan => WgpuBackend::Vulkan,
        Backend::Metal => WgpuBackend::Metal,
        Backend::Dx12 => WgpuBackend::Dx12,
        Backend::Gl => WgpuBackend::Gl,
        _ => return None,
    };
    let same_api: Vec<_> = adapters
        .iter()
        .filter(discrete)
        .filter(|a| a.backend == backend)
        .collect();
    let index = local_rank % same_api.len();
    let a = same_api[index];
    Some((
        api,
        index,
        format!(
            "{:?}: {}, GPU {index} of {} for local rank {local_rank}",
            a.backend,
            a.name,
            same_api.len()
        ),
        adapter_key(a),
    ))
}

/// What an adapter's autotune results are kept under: its graphics API, name, driver and driver
/// version — a kernel's fastest variant is a property of all four.
#[cfg(feature = "wgpu")]
fn adapter_key(a: &burn::tensor::wgpu::wgpu::AdapterInfo) -> String {
    format!("{:?}-{}-{}-{}", a.backend, a.name, a.driver, a.driver_info)
}

/// The graphics API to start wgpu on, and the adapter that implies (described, and its
/// [`adapter_key`]). A real GPU: wgpu's own
/// choice. Software only: llvmpipe through GL, the path CI tests, ahead of Mesa's lavapipe
/// (software Vulkan), which has been reported to crash compiling cubecl kernels (issue #8; not
/// reproduced with burn 0.22.1 on Mesa 22.3.6) — lavapipe is used only when it is all there is.
#[cfg(feature = "wgpu")]
fn wgpu_api(
    adapters: &[burn::tensor::wgpu::wgpu::AdapterInfo],
) -> Result<(burn::tensor::wgpu::WgpuBackend, String, String), String> {
    use burn::tensor::wgpu::WgpuBackend;
    use burn::tensor::wgpu::wgpu::{Backend, DeviceType};
    let describe =
        |a: &burn::tensor::wgpu::wgpu::AdapterInfo| format!("{:?}: {}", a.backend, a.name);
    let real = |a: &&burn::tensor::wgpu::wgpu::AdapterInfo| {
        matches!(
            a.device_type,
            DeviceType::DiscreteGpu | DeviceType::IntegratedGpu | DeviceType::VirtualGpu
        )
    };
    if let Some(gpu) = adapters.iter().find(real) {
        return Ok((WgpuBackend::Auto, describe(gpu), adapter_key(gpu)));
    }
    if let Some(gl) = adapters.iter().find(|a| a.backend == Backend::Gl) {
        return Ok((WgpuBackend::Gl, describe(gl), adapter_key(gl)));
    }
    match adapters.first() {
        Some(other) => Ok((WgpuBackend::Auto, describe(other), adapter_key(other))),
        None => Err(
            "wgpu found no graphics adapter (no GPU driver; for a software one install Mesa's EGL/GL: libegl1 libegl-mesa0 libgl1-mesa-dri)"
                .into(),
        ),
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_default() -> Result<Selected, DeviceError> {
    Err(DeviceError::NotBuilt {
        backend: "wgpu",
        feature: "wgpu",
    })
}

#[cfg(feature = "vulkan")]
fn pinned_vulkan() -> Result<Selected, DeviceError> {
    // Without a Vulkan adapter cubecl panics at the first kernel: look for one first.
    #[cfg(feature = "wgpu")]
    let (name, key) = {
        use burn::tensor::wgpu::wgpu::Backend;
        let adapters = software_or_gpu_adapters();
        match adapters.iter().find(|a| a.backend == Backend::Vulkan) {
            Some(adapter) => (format!("vulkan ({})", adapter.name), adapter_key(adapter)),
            None => {
                return Err(DeviceError::WgpuInit(
                    "no Vulkan adapter: install the GPU's Vulkan driver (`vulkaninfo --summary` should list it), or use --device wgpu".into(),
                ));
            }
        }
    };
    #[cfg(not(feature = "wgpu"))]
    let (name, key) = ("vulkan".to_string(), "vulkan".to_string());
    let autotune = crate::cache::use_autotune_dir(&key);
    Ok(Selected {
        device: Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        name,
        on_cpu: false,
        why: "asked for with --device vulkan".into(),
        autotune,
    })
}

#[cfg(not(feature = "vulkan"))]
fn pinned_vulkan() -> Result<Selected, DeviceError> {
    Err(DeviceError::NotBuilt {
        backend: "vulkan",
        feature: "vulkan",
    })
}

#[cfg(feature = "metal")]
fn pinned_metal() -> Result<Selected, DeviceError> {
    let autotune = crate::cache::use_autotune_dir("metal");
    let device = Device::metal(burn::tensor::DeviceKind::DefaultDevice);
    Ok(Selected {
        device,
        name: "metal".into(),
        on_cpu: false,
        why: "asked for with --device metal".into(),
        autotune,
    })
}

#[cfg(not(feature = "metal"))]
fn pinned_metal() -> Result<Selected, DeviceError> {
    Err(DeviceError::NotBuilt {
        backend: "metal",
        feature: "metal",
    })
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Selected, DeviceError> {
    let autotune = crate::cache::use_autotune_dir(&format!("cuda-{index}"));
    let device = Device::cuda(index);
    Ok(Selected {
        device,
        name: format!("cuda:{index}"),
        on_cpu: false,
        why: "asked for with --device".into(),
        autotune,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Selected, DeviceError> {
    Err(DeviceError::NotBuilt {
        backend: "cuda",
        feature: "cuda",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_spelling() {
        let cases = [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("CPU", DeviceChoice::Cpu),
            ("wgpu", DeviceChoice::Wgpu),
            ("vulkan", DeviceChoice::Vulkan),
            ("metal", DeviceChoice::Metal),
            ("cuda", DeviceChoice::Cuda(None)),
            ("cuda:3", DeviceChoice::Cuda(Some(3))),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), want, "{text}");
        }
    }

    #[test]
    fn round_trips_through_display() {
        for text in ["auto", "cpu", "wgpu", "vulkan", "metal", "cuda:2"] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn rejects_unknown_and_bad_index_with_the_accepted_list() {
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("`tpu`") && err.contains(DEVICE_HELP), "{err}");
        let err = "cuda:x".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(
            err.contains("cuda:x") && err.contains("whole number"),
            "{err}"
        );
        assert!("cuda:-1".parse::<DeviceChoice>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn backend_not_built_says_which_feature_to_enable() {
        let err = select(DeviceChoice::Cuda(None)).err().unwrap().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[cfg(feature = "flex")]
    #[test]
    fn cpu_selects_flex_and_says_why() {
        let selected = select(DeviceChoice::Cpu).unwrap();
        assert_eq!(selected.name, "cpu (flex)");
        assert!(selected.why.contains("--device cpu"));
    }

    #[test]
    fn the_cpu_computes_in_f32_unless_bf16_is_asked_for() {
        let cpu = select(DeviceChoice::Cpu).unwrap();
        let (auto, why) = compute_dtype(&cpu, ComputeDtype::Auto).unwrap();
        assert_eq!(auto, Dtype::F32);
        assert!(why.contains("converts"), "{why}");
        let (bf16, why) = compute_dtype(&cpu, ComputeDtype::Bf16).unwrap();
        assert_eq!(bf16, Dtype::Bf16);
        assert!(why.contains("slower"), "{why}");
        assert_eq!(
            compute_dtype(&cpu, ComputeDtype::F32).unwrap().0,
            Dtype::F32
        );
    }
}
