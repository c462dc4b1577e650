"""Ray's `ray.experimental` names that taskmesh has: `tqdm_ray`."""
