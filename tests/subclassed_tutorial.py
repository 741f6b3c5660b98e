"""The classic tf.keras pattern for a ResNet built by subclassing, as tutorials
write it; only this import block is minires's instead of TensorFlow's (the
tests swap it back to Keras's to compare): a ConvBlock with two 3x3 convs,
two BNs, ONE self.relu called twice and a Sequential shortcut that gets a
strided 1x1 conv only when strides > 1; an IdentityBlock; a ResNetBlock of
three blocks; a ResNet with a 7x7/2 stem, 3x3/2 max-pool, a Sequential of
ResNetBlocks, global average pooling and a softmax classifier. Also a VGG
written with keras.Sequential."""
# --- imports (the only lines that differ from the tutorials) ---
from minires import keras
from minires.keras import layers
# --- end of imports ---


class ConvBlock(keras.Model):
    def __init__(self, filters, kernel_size=3, strides=1):
        super(ConvBlock, self).__init__()
        self.conv1 = layers.Conv2D(filters, kernel_size, strides=strides, padding='same')
        self.bn1 = layers.BatchNormalization()
        self.relu = layers.Activation('relu')
        self.conv2 = layers.Conv2D(filters, kernel_size, strides=1, padding='same')
        self.bn2 = layers.BatchNormalization()
        self.shortcut = keras.Sequential()
        if strides > 1:
            self.shortcut.add(layers.Conv2D(filters, 1, strides=strides))

    def call(self, inputs, training=None):
        x = self.conv1(inputs)
        x = self.bn1(x, training=training)
        x = self.relu(x)
        x = self.conv2(x)
        x = self.bn2(x, training=training)
        x = layers.add([x, self.shortcut(inputs)])
        return self.relu(x)


class IdentityBlock(keras.Model):
    def __init__(self, filters, kernel_size=3):
        super(IdentityBlock, self).__init__()
        self.conv1 = layers.Conv2D(filters, kernel_size, padding='same')
        self.bn1 = layers.BatchNormalization()
        self.conv2 = layers.Conv2D(filters, kernel_size, padding='same')
        self.bn2 = layers.BatchNormalization()
        self.act = layers.Activation('relu')

    def call(self, inputs, training=None):
        x = self.act(self.bn1(self.conv1(inputs), training=training))
        x = self.bn2(self.conv2(x), training=training)
        x = x + inputs
        return self.act(x)


class ResNetBlock(keras.Model):
    def __init__(self, filters, strides=1):
        super(ResNetBlock, self).__init__()
        self.blocks = [ConvBlock(filters, strides=strides), IdentityBlock(filters), IdentityBlock(filters)]

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x


class ResNet(keras.Model):
    def __init__(self, num_classes=10, widths=(64, 128, 256, 512), first_strides=1):
        super(ResNet, self).__init__()
        self.conv = layers.Conv2D(widths[0], 7, strides=2, padding='same')
        self.bn = layers.BatchNormalization()
        self.relu = layers.Activation('relu')
        self.pool = layers.MaxPooling2D(3, strides=2, padding='same')
        self.stages = keras.Sequential([ResNetBlock(w, strides=first_strides if i == 0 else 2)
                                        for i, w in enumerate(widths)])
        self.gap = layers.GlobalAveragePooling2D()
        self.fc = layers.Dense(num_classes, activation='softmax')

    def call(self, inputs, training=None):
        x = self.relu(self.bn(self.conv(inputs), training=training))
        x = self.pool(x)
        x = self.stages(x, training=training)
        return self.fc(self.gap(x))


def sequential_vgg(input_shape=(32, 32, 3), width=32, num_classes=10):
    model = keras.Sequential()
    model.add(keras.Input(shape=input_shape))
    for filters in (width, 2 * width):
        model.add(layers.Conv2D(filters, 3, activation='relu', padding='same'))
        model.add(layers.Conv2D(filters, 3, activation='relu', padding='same'))
        model.add(layers.MaxPooling2D(2))
    model.add(layers.Flatten())
    model.add(layers.Dense(64, activation='relu'))
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(num_classes, activation='softmax'))
    return model
