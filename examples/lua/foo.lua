print("foo!")
