"""Hook switch, wired keypads (matrix / MT8870) and audio devices."""
