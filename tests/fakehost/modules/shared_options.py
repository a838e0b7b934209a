"""Mirrors ``modules/shared_options.py`` of A1111 1.10.1: the option declarations the double reads.

Keys, defaults, sections and ``infotext`` labels are the host's. Components are given as strings (gradio is not
needed by the double). Options the double never reads are omitted; ``opts.<missing>`` raises ``AttributeError`` as in
the host for an undeclared key.
"""

from __future__ import annotations

import os

from modules import paths
from modules.options import OptionInfo, options_section

options_templates: dict[str, OptionInfo] = {}

options_templates.update(
    options_section(
        ("saving-images", "Saving images/grids", "saving"),
        {
            "samples_save": OptionInfo(True, "Always save all generated images"),
            "samples_format": OptionInfo("png", "File format for images"),
            "grid_save": OptionInfo(True, "Always save all generated image grids"),
            "grid_format": OptionInfo("png", "File format for grids"),
            "grid_extended_filename": OptionInfo(
                False, "Add extended info (seed, prompt) to filename when saving grid"
            ),
            "grid_only_if_multiple": OptionInfo(True, "Do not save grids consisting of one picture"),
            "grid_prevent_empty_spots": OptionInfo(False, "Prevent empty spots in grid (when set to autodetect)"),
            "grid_background_color": OptionInfo("#ffffff", "Grid background color", "ColorPicker"),
            "n_rows": OptionInfo(
                -1, "Grid row count; use -1 for autodetect and 0 for it to be same as batch size", "Slider"
            ),
            "enable_pnginfo": OptionInfo(True, "Write infotext to metadata of the generated image"),
            "save_images_before_face_restoration": OptionInfo(
                False, "Save a copy of image before doing face restoration."
            ),
            "save_images_before_highres_fix": OptionInfo(False, "Save a copy of image before applying highres fix."),
            "save_images_before_color_correction": OptionInfo(
                False, "Save a copy of image before applying color correction"
            ),
            "save_mask": OptionInfo(False, "For inpainting, save a copy of the greyscale mask"),
            "save_mask_composite": OptionInfo(False, "For inpainting, save a masked composite"),
            "save_incomplete_images": OptionInfo(False, "Save incomplete images"),
            "jpeg_quality": OptionInfo(80, "Quality for saved jpeg and avif images", "Slider"),
        },
    )
)

options_templates.update(
    options_section(
        ("saving-paths", "Paths for saving", "saving"),
        {
            "outdir_samples": OptionInfo(
                "", "Output directory for images; if empty, defaults to three directories below"
            ),
            "outdir_txt2img_samples": OptionInfo(
                os.path.join(paths.default_output_dir, "txt2img-images"), "Output directory for txt2img images"
            ),
            "outdir_grids": OptionInfo("", "Output directory for grids; if empty, defaults to two directories below"),
            "outdir_txt2img_grids": OptionInfo(
                os.path.join(paths.default_output_dir, "txt2img-grids"), "Output directory for txt2img grids"
            ),
        },
    )
)

options_templates.update(
    options_section(
        ("face-restoration", "Face restoration", "postprocessing"),
        {
            "face_restoration": OptionInfo(False, "Restore faces", infotext="Face restoration"),
            "face_restoration_model": OptionInfo("CodeFormer", "Face restoration model", "Radio"),
        },
    )
)

options_templates.update(
    options_section(
        ("system", "System", "system"),
        {
            "samples_log_stdout": OptionInfo(False, "Always print all generation info to standard output"),
            "enable_console_prompts": OptionInfo(
                False, "Print prompts to console when generating with txt2img and img2img."
            ),
        },
    )
)

options_templates.update(
    options_section(
        ("sd", "Stable Diffusion", "sd"),
        {
            "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint", "Dropdown", infotext="Model hash"),
            "enable_quantization": OptionInfo(
                False, "Enable quantization in K samplers for sharper and cleaner results."
            ),
            "emphasis": OptionInfo("Original", "Emphasis mode", "Radio", infotext="Emphasis"),
            "enable_batch_seeds": OptionInfo(
                True, "Make K-diffusion samplers produce same images in a batch as when making a single image"
            ),
            "comma_padding_backtrack": OptionInfo(
                20, "Prompt word wrap length limit", "Slider", {"minimum": 0, "maximum": 74, "step": 1}
            ),
            "sdxl_clip_l_skip": OptionInfo(False, "Clip skip SDXL", "Checkbox"),
            "CLIP_stop_at_last_layers": OptionInfo(
                1, "Clip skip", "Slider", {"minimum": 1, "maximum": 12, "step": 1}, infotext="Clip skip"
            ),
            "upcast_attn": OptionInfo(False, "Upcast cross attention layer to float32"),
            "randn_source": OptionInfo(
                "GPU", "Random number generator source.", "Radio", {"choices": ["GPU", "CPU", "NV"]}, infotext="RNG"
            ),
            "tiling": OptionInfo(False, "Tiling", infotext="Tiling"),
            "hires_fix_refiner_pass": OptionInfo(
                "second pass", "Hires fix: which pass to enable refiner for", "Radio", infotext="Hires refiner"
            ),
        },
    )
)

options_templates.update(
    options_section(
        ("sdxl", "Stable Diffusion XL", "sd"),
        {
            "sdxl_crop_top": OptionInfo(0, "crop top coordinate"),
            "sdxl_crop_left": OptionInfo(0, "crop left coordinate"),
        },
    )
)

options_templates.update(
    options_section(
        ("vae", "VAE", "sd"),
        {
            "sd_vae": OptionInfo("Automatic", "SD VAE", "Dropdown", infotext="VAE"),
            "sd_vae_encode_method": OptionInfo("Full", "VAE type for encode", "Radio", infotext="VAE Encoder"),
            "sd_vae_decode_method": OptionInfo("Full", "VAE type for decode", "Radio", infotext="VAE Decoder"),
        },
    )
)

options_templates.update(
    options_section(
        ("img2img", "img2img", "sd"),
        {
            "inpainting_mask_weight": OptionInfo(
                1.0, "Inpainting conditioning mask strength", "Slider", infotext="Conditional mask weight"
            ),
            "img2img_extra_noise": OptionInfo(
                0.0, "Extra noise multiplier for img2img and hires fix", "Slider", infotext="Extra noise"
            ),
            "img2img_fix_steps": OptionInfo(
                False, "With img2img, do exactly the amount of steps the slider specifies."
            ),
            "overlay_inpaint": OptionInfo(True, "Overlay original for inpaint"),
            "return_mask": OptionInfo(False, "For inpainting, include the greyscale mask in results for web"),
            "return_mask_composite": OptionInfo(False, "For inpainting, include masked composite in results for web"),
        },
    )
)

options_templates.update(
    options_section(
        ("optimizations", "Optimizations", "sd"),
        {
            "s_min_uncond": OptionInfo(
                0.0,
                "Negative Guidance minimum sigma",
                "Slider",
                {"minimum": 0.0, "maximum": 15.0, "step": 0.01},
                infotext="NGMS",
            ),
            "s_min_uncond_all": OptionInfo(
                False, "Negative Guidance minimum sigma all steps", infotext="NGMS all steps"
            ),
            "token_merging_ratio": OptionInfo(0.0, "Token merging ratio", "Slider", infotext="Token merging ratio"),
            "token_merging_ratio_img2img": OptionInfo(0.0, "Token merging ratio for img2img", "Slider"),
            "token_merging_ratio_hr": OptionInfo(
                0.0, "Token merging ratio for high-res pass", "Slider", infotext="Token merging ratio hr"
            ),
            "pad_cond_uncond": OptionInfo(False, "Pad prompt/negative prompt", infotext="Pad conds"),
            "pad_cond_uncond_v0": OptionInfo(False, "Pad prompt/negative prompt (v0)", infotext="Pad conds v0"),
            "persistent_cond_cache": OptionInfo(True, "Persistent cond cache"),
            "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond"),
            "fp8_storage": OptionInfo("Disable", "FP8 weight", "Radio"),
            "cache_fp16_weight": OptionInfo(False, "Cache FP16 weight for LoRA"),
        },
    )
)

options_templates.update(
    options_section(
        ("compatibility", "Compatibility", "sd"),
        {
            "auto_backcompat": OptionInfo(True, "Automatic backward compatibility"),
            "use_old_emphasis_implementation": OptionInfo(
                False, "Use old emphasis implementation. Can be useful to reproduce old seeds."
            ),
            "use_old_karras_scheduler_sigmas": OptionInfo(False, "Use old karras scheduler sigmas (0.1 to 10)."),
            "no_dpmpp_sde_batch_determinism": OptionInfo(
                False, "Do not make DPM++ SDE deterministic across different batch sizes."
            ),
            "use_old_hires_fix_width_height": OptionInfo(
                False, "For hires fix, use width/height sliders to set final resolution rather than first pass."
            ),
            "hires_fix_use_firstpass_conds": OptionInfo(
                False, "For hires fix, calculate conds of second pass using extra networks of first pass."
            ),
            "use_old_scheduling": OptionInfo(
                False, "Use old prompt editing timelines.", infotext="Old prompt editing timelines"
            ),
            "use_downcasted_alpha_bar": OptionInfo(
                False, "Downcast model alphas_cumprod to fp16 before sampling.", infotext="Downcast alphas_cumprod"
            ),
            "refiner_switch_by_sample_steps": OptionInfo(
                False,
                "Switch to refiner by sampling steps instead of model timesteps.",
                infotext="Refiner switch by sampling steps",
            ),
        },
    )
)

options_templates.update(
    options_section(
        ("textual_inversion", "Textual Inversion", "training"),
        {
            "textual_inversion_add_hashes_to_infotext": OptionInfo(True, "Add Textual Inversion hashes to infotext"),
        },
    )
)

options_templates.update(
    options_section(
        ("ui_gallery", "Gallery", "ui"),
        {
            "return_grid": OptionInfo(True, "Show grid in gallery"),
            "do_not_show_images": OptionInfo(False, "Do not show any images in gallery"),
        },
    )
)

options_templates.update(
    options_section(
        ("infotext", "Infotext", "ui"),
        {
            "add_model_name_to_info": OptionInfo(True, "Add model name to infotext"),
            "add_model_hash_to_info": OptionInfo(True, "Add model hash to infotext"),
            "add_vae_name_to_info": OptionInfo(True, "Add VAE name to infotext"),
            "add_vae_hash_to_info": OptionInfo(True, "Add VAE hash to infotext"),
            "add_user_name_to_info": OptionInfo(False, "Add user name to infotext when authenticated"),
            "add_version_to_infotext": OptionInfo(True, "Add program version to infotext"),
            "disable_weights_auto_swap": OptionInfo(True, "Disregard checkpoint information from pasted infotext"),
            "infotext_skip_pasting": OptionInfo([], "Disregard fields from pasted infotext", "DropdownMulti"),
            "infotext_styles": OptionInfo("Apply if any", "Infer styles from prompts of pasted infotext", "Radio"),
        },
    )
)

options_templates.update(
    options_section(
        ("ui", "Live previews", "ui"),
        {
            "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
            "show_progress_grid": OptionInfo(True, "Show previews of all images generated in a batch as a grid"),
            "show_progress_every_n_steps": OptionInfo(10, "Live preview display period", "Slider"),
            "show_progress_type": OptionInfo("Approx NN", "Live preview method", "Radio"),
            "live_preview_content": OptionInfo(
                "Prompt", "Live preview subject", "Radio", {"choices": ["Combined", "Prompt", "Negative prompt"]}
            ),
            "live_preview_fast_interrupt": OptionInfo(
                False, "Return image with chosen live preview method on interrupt"
            ),
        },
    )
)

options_templates.update(
    options_section(
        ("sampler-params", "Sampler parameters", "sd"),
        {
            "hide_samplers": OptionInfo([], "Hide samplers in user interface", "CheckboxGroup"),
            "eta_ddim": OptionInfo(0.0, "Eta for DDIM", "Slider", infotext="Eta DDIM"),
            "eta_ancestral": OptionInfo(1.0, "Eta for k-diffusion samplers", "Slider", infotext="Eta"),
            "ddim_discretize": OptionInfo("uniform", "img2img DDIM discretize", "Radio"),
            "s_churn": OptionInfo(0.0, "sigma churn", "Slider", infotext="Sigma churn"),
            "s_tmin": OptionInfo(0.0, "sigma tmin", "Slider", infotext="Sigma tmin"),
            "s_tmax": OptionInfo(0.0, "sigma tmax", "Slider", infotext="Sigma tmax"),
            "s_noise": OptionInfo(1.0, "sigma noise", "Slider", infotext="Sigma noise"),
            "sigma_min": OptionInfo(0.0, "sigma min", "Number", infotext="Schedule min sigma"),
            "sigma_max": OptionInfo(0.0, "sigma max", "Number", infotext="Schedule max sigma"),
            "rho": OptionInfo(0.0, "rho", "Number", infotext="Schedule rho"),
            "eta_noise_seed_delta": OptionInfo(0, "Eta noise seed delta", "Number", {"precision": 0}, infotext="ENSD"),
            "always_discard_next_to_last_sigma": OptionInfo(
                False, "Always discard next-to-last sigma", infotext="Discard penultimate sigma"
            ),
            "sgm_noise_multiplier": OptionInfo(False, "SGM noise multiplier", infotext="SGM noise multiplier"),
            "sd_noise_schedule": OptionInfo(
                "Default", "Noise schedule for sampling", "Radio", infotext="Noise Schedule"
            ),
            "skip_early_cond": OptionInfo(
                0.0,
                "Ignore negative prompt during early sampling",
                "Slider",
                {"minimum": 0.0, "maximum": 1.0, "step": 0.01},
                infotext="Skip Early CFG",
            ),
            "beta_dist_alpha": OptionInfo(0.6, "Beta scheduler - alpha", "Slider", infotext="Beta scheduler alpha"),
            "beta_dist_beta": OptionInfo(0.6, "Beta scheduler - beta", "Slider", infotext="Beta scheduler beta"),
        },
    )
)
