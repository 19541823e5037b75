"""Dense geometry: plane-sweep depth maps, fusion, meshing, the region of interest."""
