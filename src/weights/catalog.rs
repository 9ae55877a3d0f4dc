//! The three released checkpoints and the facts users choose between them by (the
//! reference document `shared/seeds/000_*.txt`: paper, Roboflow and Ultralytics figures).

use crate::model::SamVariant;

/// Where Meta publishes the official checkpoints.
pub const DOWNLOAD_BASE_URL: &str = "https://dl.fbaipublicfiles.com/segment_anything";

/// One official checkpoint.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OfficialCheckpoint {
    pub variant: SamVariant,
    pub file_name: &'static str,
    /// Exact parameter count of the state_dict (excluding the PE buffer).
    pub parameters: usize,
    pub download_size: &'static str,
    /// Typical GPU memory for inference, from the reference document.
    pub inference_memory: &'static str,
    /// Minimum / recommended GPU memory to fine-tune the mask decoder.
    pub fine_tune_memory: &'static str,
    pub speed_per_mask_ms: u32,
    pub average_iou: f32,
    pub use_case: &'static str,
}

impl OfficialCheckpoint {
    pub fn url(&self) -> String {
        format!("{DOWNLOAD_BASE_URL}/{}", self.file_name)
    }
}

pub const OFFICIAL_CHECKPOINTS: [OfficialCheckpoint; 3] = [
    OfficialCheckpoint {
        variant: SamVariant::VitB,
        file_name: "sam_vit_b_01ec64.pth",
        parameters: 93_735_472,
        download_size: "375 MB",
        inference_memory: "3-4 GB",
        fine_tune_memory: "8 GB (12+ GB recommended)",
        speed_per_mask_ms: 50,
        average_iou: 0.83,
        use_case: "fast inference, edge, fine-tuning with limited GPU memory",
    },
    OfficialCheckpoint {
        variant: SamVariant::VitL,
        file_name: "sam_vit_l_0b3195.pth",
        parameters: 312_342_832,
        download_size: "1.2 GB",
        inference_memory: "6-8 GB",
        fine_tune_memory: "16 GB (24+ GB recommended)",
        speed_per_mask_ms: 80,
        average_iou: 0.86,
        use_case: "balanced quality and speed, interactive annotation",
    },
    OfficialCheckpoint {
        variant: SamVariant::VitH,
        file_name: "sam_vit_h_4b8939.pth",
        parameters: 641_090_608,
        download_size: "2.4 GB",
        inference_memory: "8-12 GB",
        fine_tune_memory: "24 GB (32+ GB recommended)",
        speed_per_mask_ms: 110,
        average_iou: 0.88,
        use_case: "best quality: production, medical imaging, research benchmarks",
    },
];

pub fn official(variant: SamVariant) -> &'static OfficialCheckpoint {
    OFFICIAL_CHECKPOINTS
        .iter()
        .find(|c| c.variant == variant)
        .expect("every variant has an official checkpoint")
}

/// The reference document's `select_sam_checkpoint(available_vram_gb)`.
pub fn select_by_memory(available_gb: f64) -> SamVariant {
    if available_gb >= 12.0 {
        SamVariant::VitH
    } else if available_gb >= 6.0 {
        SamVariant::VitL
    } else {
        SamVariant::VitB
    }
}

/// What the memory is for, as `samtune select --task` names it (not the training task of
/// `train::config`: promptable or semantic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Encode images and predict masks.
    Inference,
    /// Fine-tune the mask decoder on cached embeddings (the encoder frozen).
    Finetune,
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inference" => Ok(Workload::Inference),
            "finetune" | "fine-tune" => Ok(Workload::Finetune),
            other => Err(format!("task '{other}': expected inference or finetune")),
        }
    }
}

/// The kind of device a peak was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakDevice {
    /// Peak resident memory of the process (burn's CPU backend).
    Cpu,
    /// Peak GPU memory of the process, its CUDA context included (nvidia-smi).
    Cuda,
}

/// samtune's own peak memory for a variant and task, measured with `samtune bench`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasuredPeak {
    pub variant: SamVariant,
    pub workload: Workload,
    pub device: PeakDevice,
    pub megabytes: u32,
    /// When and how (the bench case; BENCHMARKS.md has the run).
    pub how: &'static str,
}

/// Every peak measured so far; a variant, task and device not listed was not measured
/// (`samtune bench --variant vit_l --case encoder` measures one). Inference is the
/// `encoder` case (the model loaded, one 1024 px image encoded), fine-tuning the
/// `finetune` case (images encoded into the cache, decoder steps of 8 box prompts).
pub const MEASURED_PEAKS: [MeasuredPeak; 8] = [
    MeasuredPeak {
        variant: SamVariant::VitB,
        workload: Workload::Inference,
        device: PeakDevice::Cpu,
        megabytes: 556,
        how: "bench --case encoder, 2026-12-02, 2 threads",
    },
    MeasuredPeak {
        variant: SamVariant::VitB,
        workload: Workload::Finetune,
        device: PeakDevice::Cpu,
        megabytes: 1026,
        how: "bench --case finetune, 2026-12-02, 2 threads",
    },
    MeasuredPeak {
        variant: SamVariant::VitL,
        workload: Workload::Inference,
        device: PeakDevice::Cpu,
        megabytes: 1475,
        how: "bench --case encoder, 2026-12-02, 2 threads",
    },
    MeasuredPeak {
        variant: SamVariant::VitL,
        workload: Workload::Finetune,
        device: PeakDevice::Cpu,
        megabytes: 1837,
        how: "bench --case finetune, 2026-12-02, 1 image",
    },
    MeasuredPeak {
        variant: SamVariant::VitH,
        workload: Workload::Inference,
        device: PeakDevice::Cpu,
        megabytes: 2748,
        how: "bench --case encoder, 2026-12-02, 2 threads",
    },
    MeasuredPeak {
        variant: SamVariant::VitH,
        workload: Workload::Finetune,
        device: PeakDevice::Cpu,
        megabytes: 3092,
        how: "bench --case finetune, 2026-12-02, 1 image",
    },
    MeasuredPeak {
        variant: SamVariant::VitB,
        workload: Workload::Inference,
        device: PeakDevice::Cuda,
        megabytes: 2827,
        how: "bench --case encoder, 2026-11-26, H200",
    },
    MeasuredPeak {
        variant: SamVariant::VitB,
        workload: Workload::Finetune,
        device: PeakDevice::Cuda,
        megabytes: 2861,
        how: "bench --case finetune, 2026-11-26, H200",
    },
];

/// samtune's measured peak for `variant` and `workload` on `device`, when there is one.
pub fn measured_peak(
    variant: SamVariant,
    workload: Workload,
    device: PeakDevice,
) -> Option<&'static MeasuredPeak> {
    MEASURED_PEAKS
        .iter()
        .find(|p| p.variant == variant && p.workload == workload && p.device == device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_thresholds_follow_the_reference_document() {
        assert_eq!(select_by_memory(4.0), SamVariant::VitB);
        assert_eq!(select_by_memory(5.99), SamVariant::VitB);
        assert_eq!(select_by_memory(6.0), SamVariant::VitL);
        assert_eq!(select_by_memory(11.9), SamVariant::VitL);
        assert_eq!(select_by_memory(12.0), SamVariant::VitH);
        assert_eq!(select_by_memory(80.0), SamVariant::VitH);
    }

    #[test]
    fn tasks_parse_and_peaks_are_found_by_variant_task_and_device() {
        assert_eq!("Inference".parse::<Workload>(), Ok(Workload::Inference));
        assert_eq!("fine-tune".parse::<Workload>(), Ok(Workload::Finetune));
        assert!("train".parse::<Workload>().unwrap_err().contains("'train'"));
        let peak = measured_peak(SamVariant::VitB, Workload::Finetune, PeakDevice::Cpu).unwrap();
        assert_eq!(peak.megabytes, 1026);
        assert!(measured_peak(SamVariant::VitH, Workload::Finetune, PeakDevice::Cuda).is_none());
    }

    #[test]
    fn urls_point_at_meta_and_parameter_counts_match_the_model() {
        for c in &OFFICIAL_CHECKPOINTS {
            assert!(c.url().ends_with(c.file_name));
            assert!(c.file_name.contains(c.variant.name()));
            let counts =
                crate::weights::ParameterCounts::from_architecture(&c.variant.architecture());
            assert_eq!(counts.total(), c.parameters, "{}", c.variant);
            assert_eq!(counts.mask_decoder, 4_058_340);
            assert_eq!(counts.prompt_encoder, 6_220);
        }
    }
}
