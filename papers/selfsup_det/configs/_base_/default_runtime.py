log_interval = 50
amp = "off"
