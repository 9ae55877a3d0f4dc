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
