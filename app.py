"""xfer studio: train an image classifier by transfer learning, in the browser (the Space's entry point).

Run ``python app.py`` (``--help`` for options). The UI lives in :mod:`xfer.studio`; this file
parses the command line, chooses the device once, builds the app and serves it.
"""

import logging

import xfer
from xfer import studio
from xfer.presets import get_preset
from xfer.studio import zerogpu

log = logging.getLogger("xfer.app")


def main(argv: list[str] | None = None) -> None:
    args = studio.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for flag in ("max_train_jobs", "session_models", "session_model_mb", "sessions_disk_mb"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1")
    zerogpu.space_storage()
    if zerogpu.enabled() and args.device == "auto":
        # ZeroGPU: CUDA is real only inside @spaces.GPU functions; the app keeps its models on the CPU.
        args.device = "cpu"
    try:
        device = xfer.select_device(args.device)
    except xfer.XferError as e:
        raise SystemExit(f"error: {e}") from None
    xfer.device.configure_runtime(device)
    log.info("device: %s; at most %d training run(s) at a time", device.name, args.max_train_jobs)
    demo = studio.build_demo(device, studio.defaults_from(args), max_train_jobs=args.max_train_jobs,
                             max_upload_mb=args.max_upload_mb, allow_server_paths=studio.server_paths_allowed(args),
                             models_dir=args.models_dir, cache_models=args.classify_cache_models,
                             cache_mb=args.classify_cache_mb, session_models=args.session_models,
                             session_model_mb=args.session_model_mb, sessions_disk_mb=args.sessions_disk_mb)
    if zerogpu.on_space():
        # The backbone the Train tab starts with: --default-backbone, else the preset's, else xfer's default.
        zerogpu.prefetch_weights(args.default_backbone or get_preset(args.default_preset).backbone
                                 or xfer.default_backbone()[0])
    studio.launch(demo, args)


if __name__ == "__main__":
    main()
