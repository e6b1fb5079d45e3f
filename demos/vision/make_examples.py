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

    im, d = canvas()  # sneaker: a low shoe from the side filling the width, toe to the left, its top
    # rising towards the heel (the outline of Fashion-MNIST's mean sneaker), a lighter sole
    d.polygon([(2, 64), (30, 56), (52, 46), (70, 36), (90, 30), (104, 30), (110, 40), (110, 80), (2, 80)], fill=70)
    d.rectangle([2, 74, 110, 80], fill=110)
    im.filter(ImageFilter.GaussianBlur(1)).save("sneaker.png", optimize=True)

    im, d = canvas()  # bag: a box with a handle
    d.rounded_rectangle([18, 42, 94, 100], radius=6, fill=80)
    d.arc([36, 14, 76, 62], start=180, end=360, fill=60, width=6)
    im.filter(ImageFilter.GaussianBlur(1)).save("bag.png", optimize=True)


if __name__ == "__main__":
    main()
