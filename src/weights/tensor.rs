//! One tensor in host memory: f32 values and their shape. What every reader returns and every
//! writer takes; knows no file format.

/// Row-major values and their shape (PyTorch order).
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}
