"""The sampling machinery behind the nodes: the guider that runs each model call's plan, the
patch at the attention sites, the architecture adapters that hook it into ComfyUI, compile
support, and the runs of ComfyUI's sampler machinery the nodes share."""
