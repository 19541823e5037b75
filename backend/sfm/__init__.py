"""Structure-from-Motion on pycolmap: features, matching, mapping, undistortion (the first four stages)."""
