//! Minimal reproduction of the Mesa lavapipe crash (issue #8): one elementwise add through
//! burn's wgpu runtime pinned to Vulkan. On a machine whose only Vulkan driver is lavapipe this
//! dies with SIGSEGV inside vkCreateComputePipelines; the same add through wgpu's GL backend on
//! llvmpipe works.
//!
//!     cargo run --release --example lavapipe_repro -- vulkan|gl
//!     cargo run --release --features vulkan --example lavapipe_repro -- spirv
//!     CUBECL_DEBUG_LOG=stderr cargo run --release --example lavapipe_repro -- vulkan   # + the WGSL

use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, Tensor};

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let device: Device = match which.as_str() {
        // burn's Vulkan runtime (cubecl's SPIR-V compiler); needs `--features vulkan`.
        #[cfg(feature = "vulkan")]
        "spirv" => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        "gl" => wgpu_on(WgpuBackend::Gl),
        _ => wgpu_on(WgpuBackend::Vulkan),
    };
    eprintln!("initialised {which}; running one add");
    let a = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
    let b = Tensor::<1>::from_floats([10.0, 20.0, 30.0], &device);
    let sum = (a + b).into_data();
    println!("{sum}");
}

fn wgpu_on(api: WgpuBackend) -> Device {
    Device::wgpu_options()
        .graphics_api(api)
        .init()
        .expect("wgpu init")
}
