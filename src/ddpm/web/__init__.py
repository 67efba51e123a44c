"""The web page of ``ddpm serve`` (the optional extra ``ddpm[web]``): ``page`` holds what each button does, with no
web in it; ``app`` lays it out with Gradio, which only it imports, and only when a page is built."""
