"""Hook switch, keypad (matrix / MT8870 / in-band DTMF) and audio devices."""
