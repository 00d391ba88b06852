"""Benchmark runners: MVTec-layout image folders (`run_image_bench`) and vector sets (`vector`)."""
