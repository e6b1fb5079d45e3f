"""Draw the example images of the vision demo (trouser.png, sneaker.png, bag.png).

Simple dark silhouettes on a white background, 112x112, drawn with PIL: not Fashion-MNIST
images (the dataset is never copied into the repository). Run from this folder:
``python make_examples.py``.
"""

from PIL import Image, ImageDraw, ImageFilter

S = 112


def canvas():
    im = Image.new("L", (S, S), 255)
    return im, ImageDraw.Draw(im)


def main() -> None:
    im, d = canvas()  # trouser: two long legs joined at the waist
    d.polygon([(38, 8), (74, 8), (78, 104), (62, 104), (56, 36), (50, 104), (34, 104)], fill=70)
    d.rectangle([38, 8, 74, 16], fill=50)
    im.filter(ImageFilter.GaussianBlur(1)).save("trouser.png", optimize=True)

    im, d = canvas()  # sneaker: low, long shoe seen from the side, toe to the left, a light sole
    d.polygon([(6, 62), (24, 54), (56, 52), (72, 46), (98, 46), (106, 52), (106, 70), (6, 70)], fill=70)
    d.rectangle([4, 70, 108, 76], fill=120)
    d.line([(44, 58), (62, 52)], fill=200, width=3)
    im.filter(ImageFilter.GaussianBlur(1)).save("sneaker.png", optimize=True)

    im, d = canvas()  # bag: a box with a handle
    d.rounded_rectangle([18, 42, 94, 100], radius=6, fill=80)
    d.arc([36, 14, 76, 62], start=180, end=360, fill=60, width=6)
    im.filter(ImageFilter.GaussianBlur(1)).save("bag.png", optimize=True)


if __name__ == "__main__":
    main()
