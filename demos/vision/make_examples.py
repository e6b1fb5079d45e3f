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

    im, d = canvas()  # sneaker: low shoe seen from the side, toe to the left
    d.polygon([(10, 62), (30, 50), (52, 46), (66, 30), (92, 28), (100, 40), (102, 74), (10, 74)], fill=90)
    d.rectangle([8, 74, 104, 84], fill=40)
    d.line([(40, 54), (60, 44)], fill=200, width=3)
    im.filter(ImageFilter.GaussianBlur(1)).save("sneaker.png", optimize=True)

    im, d = canvas()  # bag: a box with a handle
    d.rounded_rectangle([18, 42, 94, 100], radius=6, fill=80)
    d.arc([36, 14, 76, 62], start=180, end=360, fill=60, width=6)
    im.filter(ImageFilter.GaussianBlur(1)).save("bag.png", optimize=True)


if __name__ == "__main__":
    main()
