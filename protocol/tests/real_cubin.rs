//! The module image parser on a real cubin: guest-tests/kernels.ptx assembled
//! by NVIDIA's ptxas 12.9 for sm_90 (tests/data/gv_kernels_sm90.cubin). The
//! parameter layouts must match the PTX signatures.

use protocol::module_image::{detect, image_len, kernels, ImageKind};

#[test]
fn ptxas_output_yields_every_kernel_with_its_parameter_layout() {
    let cubin = include_bytes!("data/gv_kernels_sm90.cubin");
    assert_eq!(detect(cubin), Some(ImageKind::Cubin));
    assert_eq!(image_len(cubin).unwrap(), cubin.len());
    let ks = kernels(cubin).unwrap();
    let layout = |name: &str| -> Vec<(u32, u32)> {
        ks.iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .params
            .iter()
            .map(|p| (p.offset, p.size))
            .collect()
    };
    assert_eq!(ks.len(), 6);
    assert_eq!(layout("gv_empty"), vec![]);
    assert_eq!(layout("gv_fill_u32"), vec![(0, 8), (8, 4), (16, 8)]);
    assert_eq!(layout("gv_saxpy_f32"), vec![(0, 4), (8, 8), (16, 8), (24, 8)]);
    assert_eq!(layout("gv_matmul_f32"), vec![(0, 8), (8, 8), (16, 8), (24, 4)]);
    // The PTX the cubin came from gives the same layout.
    let mut ptx = include_bytes!("../../guest-tests/kernels.ptx").to_vec();
    ptx.push(0);
    let from_ptx = kernels(&ptx).unwrap();
    for k in &ks {
        let p = from_ptx.iter().find(|p| p.name == k.name).unwrap();
        assert_eq!(p.params, k.params, "{}", k.name);
    }
}
