//! Every tensor that crosses between the host and a device goes through here, and a ledger
//! counts what does: a training step on a GPU should move its batch (token ids, labels, masks)
//! up and a few scalars (loss, gradient norm) down, and nothing of the size of the parameters or
//! of tokens × hidden. Tensors made on flex are in host memory already and are not counted.
//! The ledger is per thread: a step's transfers are made by the thread that runs it.
//! Knows no model.

use std::cell::Cell;
use std::ops::Sub;

use burn::backend::DispatchDevice;
use burn::tensor::kind::Basic;
use burn::tensor::{Device, Element, Tensor, TensorCreationOptions, TensorData};

thread_local! {
    static LEDGER: Cell<Ledger> = const {
        Cell::new(Ledger {
            uploads: 0,
            uploaded_bytes: 0,
            downloads: 0,
            downloaded_bytes: 0,
        })
    };
}

/// Transfers between the host and a device since this thread started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ledger {
    pub uploads: u64,
    pub uploaded_bytes: u64,
    pub downloads: u64,
    pub downloaded_bytes: u64,
}

impl Sub for Ledger {
    type Output = Ledger;

    /// What moved between two readings.
    fn sub(self, earlier: Ledger) -> Ledger {
        Ledger {
            uploads: self.uploads - earlier.uploads,
            uploaded_bytes: self.uploaded_bytes - earlier.uploaded_bytes,
            downloads: self.downloads - earlier.downloads,
            downloaded_bytes: self.downloaded_bytes - earlier.downloaded_bytes,
        }
    }
}

/// This thread's transfers so far.
pub fn ledger() -> Ledger {
    LEDGER.get()
}

fn record(change: impl FnOnce(&mut Ledger)) {
    let mut ledger = LEDGER.get();
    change(&mut ledger);
    LEDGER.set(ledger);
}

/// Whether tensors on `device` live in host memory (flex, with or without autodiff).
pub fn in_host_memory(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// A tensor made of `data` where `options` say (a device, or a device and a dtype): an upload,
/// counted, unless the device is the CPU.
pub fn upload<const D: usize, K: Basic>(
    data: TensorData,
    options: impl Into<TensorCreationOptions>,
) -> Tensor<D, K> {
    let options = options.into();
    if !in_host_memory(&options.device) {
        let bytes = data.bytes().len() as u64;
        record(|l| (l.uploads, l.uploaded_bytes) = (l.uploads + 1, l.uploaded_bytes + bytes));
    }
    Tensor::from_data(data, options)
}

/// `t`'s values on the host (a download, counted, unless it lives there); Err says why the
/// device could not give them.
pub fn download<const D: usize, K: Basic>(t: Tensor<D, K>) -> Result<TensorData, String> {
    let counted = !in_host_memory(&t.device());
    let data = t.try_into_data().map_err(|e| format!("{e:?}"))?;
    if counted {
        let bytes = data.bytes().len() as u64;
        record(|l| {
            (l.downloads, l.downloaded_bytes) = (l.downloads + 1, l.downloaded_bytes + bytes)
        });
    }
    Ok(data)
}

/// The one value of a one-element tensor, downloaded.
pub fn scalar<E: Element, const D: usize>(t: Tensor<D>) -> Result<E, String> {
    let data = download(t)?;
    data.iter::<E>()
        .next()
        .ok_or_else(|| "an empty tensor where one value was expected".into())
}
