print("apus-controller")
